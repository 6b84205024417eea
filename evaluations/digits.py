"""The judge of the digits demo: class accuracy by a classifier fitted on real digits, and the Frechet
distance of samples to the held-out real digits in a 20-component PCA space of pixels (scaled to [0, 1]).

    python -m evaluations.digits --gpt-ckpt results/digits/000-ARPG-digits/checkpoints/0001200.pt
"""
import argparse
from dataclasses import dataclass
from typing import Dict

import numpy as np

from autoregressive.utils.cli import check_at_least, check_at_most, run_main
from dataset.digits import DIGITS_VOCAB_SIZE, load_digits_split
from evaluations.c2i import metrics


def to_pixels(images: np.ndarray) -> np.ndarray:
    """(M, 64) grey levels 0..16 -> float in [0, 1]."""
    return np.asarray(images, dtype=np.float64) / (DIGITS_VOCAB_SIZE - 1)


def fit_digit_classifier(images: np.ndarray, labels: np.ndarray):
    """An RBF support-vector classifier on pixels; about 99% on the held-out real digits."""
    from sklearn.svm import SVC

    return SVC(gamma=0.05, C=5.0).fit(to_pixels(images), labels)


def class_accuracy(classifier, images: np.ndarray, labels: np.ndarray) -> float:
    return float((classifier.predict(to_pixels(images)) == np.asarray(labels)).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (M, d) and b (K, d)."""
    return metrics.frechet_distance(*metrics.statistics(a), *metrics.statistics(b))


@dataclass
class DigitsReport:
    accuracy: float  # of the samples, by the classifier fitted on real training digits
    real_accuracy: float  # of that classifier on the held-out real digits
    frechet: float  # samples vs held-out real digits, 20-component PCA of pixels
    real_floor: float  # as many real training digits as samples vs the held-out ones

    def lines(self):
        return [f"class accuracy of samples: {self.accuracy:.1%} (classifier on held-out real digits: {self.real_accuracy:.1%})",
                f"Frechet distance to held-out digits (PCA-20): {self.frechet:.3f} (real-vs-real floor {self.real_floor:.3f})"]


class DigitsJudge:
    """The classifier and the PCA fitted once on the real digits, for judging many sample sets (a training
    run judges its samples every --eval-every steps)."""

    def __init__(self, n_components: int = 20, seed: int = 0):
        from sklearn.decomposition import PCA

        train_images, train_labels = load_digits_split("train")
        self.val_images, self.val_labels = load_digits_split("val")
        self.train_images, self.seed = train_images, seed
        self.classifier = fit_digit_classifier(train_images, train_labels)
        self.pca = PCA(n_components, random_state=seed).fit(to_pixels(train_images))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(M, 64) grey levels -> (M, n_components) PCA features."""
        return self.pca.transform(to_pixels(images))

    def features(self, tokens) -> Dict[str, np.ndarray]:
        """(B, 64) torch tokens -> the per-sample rows a training run gathers from its processes."""
        return {"tokens": tokens.cpu().numpy()}

    def score(self, features: Dict[str, np.ndarray], labels: np.ndarray) -> Dict[str, float]:
        """Gathered rows in sample order -> class_accuracy and frechet_distance (see __call__)."""
        report = self(features["tokens"], labels)
        return {"class_accuracy": report.accuracy, "frechet_distance": report.frechet}

    def __call__(self, samples: np.ndarray, labels: np.ndarray) -> DigitsReport:
        """samples (M, 64) grey levels with their intended labels (M,)."""
        real_subset = np.random.default_rng(self.seed).choice(len(self.train_images),
                                                              min(len(samples), len(self.train_images)), replace=False)
        val_features = self.embed(self.val_images)
        return DigitsReport(accuracy=class_accuracy(self.classifier, samples, labels),
                            real_accuracy=class_accuracy(self.classifier, self.val_images, self.val_labels),
                            frechet=frechet_distance(self.embed(samples), val_features),
                            real_floor=frechet_distance(self.embed(self.train_images[real_subset]), val_features))


def judge(samples: np.ndarray, labels: np.ndarray, n_components: int = 20, seed: int = 0) -> DigitsReport:
    """samples (M, 64) grey levels with their intended labels (M,)."""
    return DigitsJudge(n_components, seed)(samples, labels)


def main(argv=None):
    import torch

    from autoregressive.generate import generate
    from autoregressive.model_args import add_model_args, check_model_args, model_from_args
    from autoregressive.sampling import SamplingConfig, add_sampling_args

    parser = argparse.ArgumentParser(description="Sample a digits model and judge the samples.")
    add_model_args(parser, gpt_model="ARPG-digits", vq=False, sizes=False)
    parser.add_argument("--num-samples", type=int, default=1000, help="sample i has class i mod 10")
    parser.add_argument("--seed", type=int, default=0)
    args = add_sampling_args(parser, cfg_scale=2.0, num_steps=16).parse_args(argv)
    check_model_args(args)
    check_at_least("--num-samples", args.num_samples, 2)  # a Frechet distance needs a covariance
    sampling = SamplingConfig.from_args(args)
    model, _ = model_from_args(args, "cpu")
    labels = torch.arange(args.num_samples) % model.config.num_classes
    check_at_most("--step", args.step, model.config.block_size, "the number of tokens of an image")
    tokens = generate(model, labels, sampling, generator=torch.Generator().manual_seed(args.seed))
    report = judge(tokens.numpy(), labels.numpy())
    print("\n".join(report.lines()))


if __name__ == "__main__":
    run_main(main)

"""The ADM evaluator's command, in PyTorch: Inception Score, FID, sFID, precision and recall.

    python -m evaluations.c2i.evaluator VIRTUAL_imagenet256_labeled.npz samples.npz \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth  # omitted: torch-fidelity downloads them

Images are read from arr_0 (N, H, W, 3) in 0..255. When the reference npz stores mu/sigma (pool_3) and
mu_s/sigma_s (spatial), FID and sFID use them, as ADM does; its arr_0 serves precision and recall.
The figures are printed and written beside the sample npz as <sample>.txt.
"""
import argparse
import os
from typing import Callable, Dict

import numpy as np

from evaluations.c2i.metrics import frechet_distance, inception_score, precision_recall, statistics

STORED_STATS = ("mu", "sigma", "mu_s", "sigma_s")


def read_images(path: str, data) -> np.ndarray:
    """arr_0 of an npz as uint8 NHWC, with an error naming the file if it is not a valid image batch."""
    if "arr_0" not in data:
        raise ValueError(f"{path} has no arr_0 (it holds {sorted(data.keys())})")
    images = data["arr_0"]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be (N, H, W, 3), got {images.shape}")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise ValueError(f"{path}: arr_0 holds NaN or inf; the sampler wrote broken images, sample again")
    if images.min() < 0 or images.max() > 255:
        raise ValueError(f"{path}: arr_0 values must be in 0..255, got {images.min()}..{images.max()}")
    return images.astype(np.uint8)


def evaluate(ref_path: str, sample_path: str, features: Callable) -> Dict[str, float]:
    """features: images (M, H, W, 3) uint8 -> (pool (M, 2048), spatial (M, d), logits (M, 1008))."""
    with np.load(ref_path) as ref, np.load(sample_path) as sample:
        sample_pool, sample_spatial, sample_logits = features(read_images(sample_path, sample))
        ref_pool = ref_spatial = None
        if "arr_0" in ref:
            ref_pool, ref_spatial, _ = features(read_images(ref_path, ref))
        if all(key in ref for key in STORED_STATS):
            mu, sigma, mu_s, sigma_s = (ref[key] for key in STORED_STATS)
        elif ref_pool is not None:
            (mu, sigma), (mu_s, sigma_s) = statistics(ref_pool), statistics(ref_spatial)
        else:
            raise ValueError(f"{ref_path} has neither arr_0 nor the statistics {STORED_STATS}")
    results = {"Inception Score": inception_score(sample_logits),
               "FID": frechet_distance(*statistics(sample_pool), mu, sigma),
               "sFID": frechet_distance(*statistics(sample_spatial), mu_s, sigma_s)}
    if ref_pool is not None:
        results["Precision"], results["Recall"] = precision_recall(ref_pool, sample_pool)
    return results


def main():
    parser = argparse.ArgumentParser(description="ADM metrics (IS, FID, sFID, precision, recall) in PyTorch.")
    parser.add_argument("ref_batch", help="reference npz, e.g. VIRTUAL_imagenet256_labeled.npz")
    parser.add_argument("sample_batch", help="sample npz written by sample_c2i_ddp.py")
    parser.add_argument("--inception-weights", default=None,
                        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (see the README); omitted: "
                             "torch-fidelity downloads them into the torch hub cache, or finds them there")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    args = parser.parse_args()
    for path in (args.ref_batch, args.sample_batch):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"npz not found: {path}")
    from evaluations.c2i.inception import InceptionFeatures

    results = evaluate(args.ref_batch, args.sample_batch, InceptionFeatures(args.inception_weights, args.device,
                                                                            args.batch_size))
    lines = [f"{name}: {value:.4f}" for name, value in results.items()]
    with open(os.path.splitext(args.sample_batch)[0] + ".txt", "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

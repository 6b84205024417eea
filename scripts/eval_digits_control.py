"""How closely digits sampled under a shape condition follow it: the controllable demo model against
the class-only one, on the 360 held-out digits (each digit's class and binarised shape).

Shape agreement: the fraction of the 64 pixels where the binarised sample equals the condition, and
the IoU of the two shapes; class accuracy by the demo's judge (evaluations/digits.py). The last
rows combine editing and control: the upper half of each held-out digit is kept and the lower half
regenerated, with the shape condition inside the regenerated region or without it; agreement is
measured on the regenerated half. One row gives each digit the shape of a digit of the next class
(label + 1 mod 10), so class and condition disagree; its agreement is with that shape, and the line
below the table says how often the judge sides with the shape. Writes a picture: per class, the
condition, a controlled sample, a class-only sample, the edit's input (kept upper half, the condition
in the lower half) and its result.

    python -m scripts.eval_digits_control --class-ckpt results/digits/000-ARPG-digits/checkpoints/0001200.pt \\
        --control-ckpt results/digits_shape/000-ARPG-digits/checkpoints/0001200.pt --out assets/digits_control.png
"""
import argparse
import os
from typing import Dict, Optional

import numpy as np
import torch
from torchvision.utils import save_image

from autoregressive import editing
from autoregressive.generate import SamplingConfig, generate
from autoregressive.render import tokens_to_view
from autoregressive.sampling import add_sampling_args
from autoregressive.utils.cli import check_file, run_main
from autoregressive.weights import add_weights_arg, load_gpt
from dataset.digits import DIGITS_VOCAB_SIZE, SHAPE_INFO, digit_shapes, load_digits_split
from evaluations.digits import class_accuracy, fit_digit_classifier


def shape_agreement(samples: np.ndarray, shapes: np.ndarray, region: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Pixel agreement and mean IoU of the samples' binarised shapes with the condition shapes
    (M, 64), over `region` (64,) bool (default: every pixel)."""
    region = np.ones(samples.shape[1], dtype=bool) if region is None else region
    drawn, wanted = digit_shapes(samples)[:, region].astype(bool), shapes[:, region].astype(bool)
    union = (drawn | wanted).sum(1)
    iou = np.where(union > 0, (drawn & wanted).sum(1) / np.maximum(union, 1), 1.0)
    return {"agreement": float((drawn == wanted).mean()), "iou": float(iou.mean())}


def other_class_shapes(labels: np.ndarray, shapes: np.ndarray, seed: int):
    """For each digit, the shape and class of a random held-out digit of the next class."""
    rng = np.random.default_rng(seed)
    donors = np.array([rng.choice(np.flatnonzero(labels == (label + 1) % 10)) for label in labels])
    return shapes[donors], labels[donors]


def load(path: str, weights: Optional[str], **overrides):
    return load_gpt("ARPG-digits", path, "cpu", "none", weights, **overrides)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--class-ckpt", required=True, help="the class-only demo model")
    parser.add_argument("--control-ckpt", required=True, help="the demo model trained with --condition-path")
    add_weights_arg(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples/digits_control.png")
    args = add_sampling_args(parser, cfg_scale=2.0, num_steps=16).parse_args(argv)
    check_file("--class-ckpt", args.class_ckpt)
    check_file("--control-ckpt", args.control_ckpt)
    sampling = SamplingConfig.from_args(args)
    class_only = load(args.class_ckpt, args.weights)
    controlled = load(args.control_ckpt, args.weights, condition_vocab_size=SHAPE_INFO.vocab_size)
    classifier = fit_digit_classifier(*load_digits_split("train"))
    images, labels = load_digits_split("val")
    shapes = digit_shapes(images)
    labels_t, shapes_t = torch.from_numpy(labels), torch.from_numpy(shapes)
    keep = editing.shape_mask("bottom", controlled.config.grid_size).reshape(-1)  # keeps the upper half
    regenerated = (~keep).numpy()

    def run(model, region=None, wanted_shapes=shapes, **extra):
        tokens = generate(model, labels_t, sampling, generator=torch.Generator().manual_seed(args.seed), **extra)
        return tokens, {**shape_agreement(tokens.numpy(), wanted_shapes, region),
                        "accuracy": class_accuracy(classifier, tokens.numpy(), labels)}

    conflicting_shapes, shape_classes = other_class_shapes(labels, shapes, args.seed)

    edit = dict(known=torch.from_numpy(images), known_mask=keep.expand(len(labels), -1))
    results = {
        "class-only model": run(class_only),
        "controllable model, no condition": run(controlled),
        "controllable model, shape condition": run(controlled, condition_map=shapes_t),
        "controllable model, shape of a digit of the next class": run(
            controlled, wanted_shapes=conflicting_shapes, condition_map=torch.from_numpy(conflicting_shapes)),
        "lower half regenerated, class only": run(class_only, regenerated, **edit),
        "lower half regenerated, shape condition inside": run(controlled, regenerated, condition_map=shapes_t, **edit),
    }
    print(f"{len(labels)} held-out digits, {sampling.num_steps} steps, CFG {sampling.cfg_scale}; "
          f"real digits: {class_accuracy(classifier, images, labels):.1%} by the judge")
    print("| sampling | shape agreement (pixels) | shape IoU | class accuracy |\n|---|---|---|---|")
    for name, (_, scores) in results.items():
        print(f"| {name} | {scores['agreement']:.1%} | {scores['iou']:.2f} | {scores['accuracy']:.1%} |")
    conflicting = results["controllable model, shape of a digit of the next class"][0].numpy()
    print(f"next-class shapes: the judge names the shape's class for "
          f"{class_accuracy(classifier, conflicting, shape_classes):.1%} of the samples")
    write_picture(args.out, labels, shapes, images, keep.numpy(), results)


def write_picture(path: str, labels: np.ndarray, shapes: np.ndarray, images: np.ndarray, keep: np.ndarray, results):
    """One column per class (its first held-out digit); rows: condition, controlled sample, class-only
    sample, edit input (upper half kept, the condition below), edit with the condition inside."""
    columns = [int(np.flatnonzero(labels == label)[0]) for label in range(10)]
    white = DIGITS_VOCAB_SIZE - 1
    condition = shapes[columns] * white
    edit_input = np.where(keep, images[columns], condition)
    rows = [condition, results["controllable model, shape condition"][0].numpy()[columns],
            results["class-only model"][0].numpy()[columns], edit_input,
            results["lower half regenerated, shape condition inside"][0].numpy()[columns]]
    tokens = torch.from_numpy(np.concatenate(rows)).long()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_image(tokens_to_view(tokens, 8, None, DIGITS_VOCAB_SIZE), path, nrow=len(columns), padding=2, pad_value=0.5)
    print(f"saved {path}")


if __name__ == "__main__":
    run_main(main)

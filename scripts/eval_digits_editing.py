"""Zero-shot completion of held-out real digits with the demo model, judged by the demo's classifier.

For each mask (lower half, border of 2 tokens), every held-out digit is completed given its class
(CFG 2.0) and without it (guidance scale 0: the "no class" prediction alone); the classifier's accuracy
on the completions is printed beside its accuracy on the real digits.

    python scripts/eval_digits_editing.py --gpt-ckpt results/digits/000-ARPG-digits/checkpoints/0001200.pt
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autoregressive import editing  # noqa: E402
from autoregressive.generate import SamplingConfig, generate  # noqa: E402
from autoregressive.models.arpg import ARPG_models  # noqa: E402
from autoregressive.utils.cli import check_file, run_main  # noqa: E402
from autoregressive.weights import load_model_weights  # noqa: E402
from dataset.digits import load_digits_split  # noqa: E402
from evaluations.digits import class_accuracy, fit_digit_classifier  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpt-ckpt", required=True)
    parser.add_argument("--step", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_file("--gpt-ckpt", args.gpt_ckpt)
    SamplingConfig(num_steps=args.step)  # refuses a bad --step before the model and classifier are built
    model = load_model_weights(ARPG_models["ARPG-digits"](), args.gpt_ckpt).eval()
    classifier = fit_digit_classifier(*load_digits_split("train"))
    images, labels = load_digits_split("val")
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    print(f"real held-out digits: {class_accuracy(classifier, images.numpy(), labels.numpy()):.1%}")
    grid = model.config.grid_size
    for name, keep in (("lower half", editing.shape_mask("bottom", grid)), ("border 2", editing.shape_mask("border", grid, 2))):
        mask = keep.reshape(1, -1).expand(len(labels), -1)
        for condition, sampling in (("given the class", SamplingConfig(num_steps=args.step, cfg_scale=2.0)),
                                    ("class dropped", SamplingConfig(num_steps=args.step, cfg_scale=0.0,
                                                                     cfg_schedule="constant"))):
            done = generate(model, labels, sampling, generator=torch.Generator().manual_seed(args.seed),
                            known=images, known_mask=mask)
            accuracy = class_accuracy(classifier, done.numpy(), labels.numpy())
            print(f"{name} regenerated, {condition}: {accuracy:.1%} of {len(labels)} completions recognised")


if __name__ == "__main__":
    run_main(main)

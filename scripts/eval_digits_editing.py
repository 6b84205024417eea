"""Zero-shot completion of held-out real digits with the demo model, judged by the demo's classifier.

For each mask (lower half, border of 2 tokens), every held-out digit is completed given its class
(CFG 2.0 by default) and without it (guidance scale 0: the "no class" prediction alone); the classifier's accuracy
on the completions is printed beside its accuracy on the real digits.

    python -m scripts.eval_digits_editing --gpt-ckpt results/digits/000-ARPG-digits/checkpoints/0001200.pt
"""
import argparse
import dataclasses

import torch

from autoregressive import editing
from autoregressive.generate import generate
from autoregressive.model_args import add_model_args, check_model_args, model_from_args
from autoregressive.sampling import SamplingConfig, add_sampling_args
from autoregressive.utils.cli import run_main
from dataset.digits import load_digits_split
from evaluations.digits import class_accuracy, fit_digit_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, gpt_model="ARPG-digits", vq=False, sizes=False)
    parser.add_argument("--seed", type=int, default=0)
    args = add_sampling_args(parser, cfg_scale=2.0, num_steps=16).parse_args(argv)
    check_model_args(args)
    given = SamplingConfig.from_args(args)  # refuses bad sampling flags before the model and classifier are built
    dropped = dataclasses.replace(given, cfg_scale=0.0, cfg_schedule="constant")
    model, _ = model_from_args(args, "cpu")
    classifier = fit_digit_classifier(*load_digits_split("train"))
    images, labels = load_digits_split("val")
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    print(f"real held-out digits: {class_accuracy(classifier, images.numpy(), labels.numpy()):.1%}")
    grid = model.config.grid_size
    for name, keep in (("lower half", editing.shape_mask("bottom", grid)), ("border 2", editing.shape_mask("border", grid, 2))):
        mask = keep.reshape(1, -1).expand(len(labels), -1)
        for condition, sampling in (("given the class", given), ("class dropped", dropped)):
            done = generate(model, labels, sampling, generator=torch.Generator().manual_seed(args.seed),
                            known=images, known_mask=mask)
            accuracy = class_accuracy(classifier, done.numpy(), labels.numpy())
            print(f"{name} regenerated, {condition}: {accuracy:.1%} of {len(labels)} completions recognised")


if __name__ == "__main__":
    run_main(main)

"""Sample a grid of images for a few classes (one process, CPU or GPU).

    python sample_c2i.py --gpt-model ARPG-L --gpt-ckpt arpg_300m.pt --vq-ckpt vq_ds16_c2i.pt \\
        --class-labels 207 360 387 974 88 979 417 279 --cfg-scale 4.5 --step 64
A digits model needs no --vq-ckpt: its tokens are the pixels. A controllable model samples under a
condition map (--condition-map, a .npy of condition ids on the token grid), e.g. the shape of a held-out digit:
    python sample_c2i.py --gpt-model ARPG-digits --gpt-ckpt CKPT --condition-vocab-size 2 \\
        --condition-map data/digits/val_shape/3/2.npy --class-labels 3 --samples-per-class 8 --cfg-scale 2.0
"""
import argparse
import os

import torch
from torchvision.utils import save_image

from autoregressive.fast_generate import make_sampler
from autoregressive.generate import check_class_ids
from autoregressive.model_args import add_model_args, check_model_args, model_from_args
from autoregressive.render import tokens_to_view
from autoregressive.sampling import SamplingConfig, add_sampling_args
from autoregressive.utils.cli import RenamedFlag, check_at_least, check_at_most, check_image_output, run_main
from autoregressive.utils.device import resolve_device
from dataset.conditions import add_condition_args, check_condition_args, load_condition_map


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Sample a PNG grid from an ARPG checkpoint.")
    add_model_args(parser)
    parser.add_argument("--class-labels", type=int, nargs="+", default=[207, 360, 387, 974, 88, 979, 417, 279])
    parser.add_argument("--samples-per-class", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--out", default="samples/grid.png")
    parser.add_argument("--compile-layers", action="store_true",
                        help="compile the layers too (CUDA): faster, logits close to, not equal to, the eager layers'")
    parser.add_argument("--fused", dest="compile_layers", action=RenamedFlag, new_flag="--compile-layers", nargs=0,
                        const=True)
    add_condition_args(parser)
    return add_sampling_args(parser)


def check_args(args) -> None:
    """Refuse bad flags before any model is built."""
    check_model_args(args)
    check_at_least("--samples-per-class", args.samples_per_class, 1)
    for label in args.class_labels:
        check_at_least("--class-labels", label, 0)
    check_image_output("--out", args.out)
    check_condition_args(args)


def main(args) -> None:
    check_args(args)
    sampling = SamplingConfig.from_args(args)
    device = resolve_device(args.device)
    model, vq = model_from_args(args, device, condition_vocab_size=args.condition_vocab_size)
    labels = torch.tensor(args.class_labels, device=device).repeat_interleave(args.samples_per_class)
    check_class_ids(labels, model.config.num_classes)
    check_at_most("--step", args.step, model.config.block_size, "the number of tokens of an image")
    extra = {}
    if args.condition_map:
        maps = load_condition_map(args.condition_map, len(labels), model.config.block_size, args.condition_vocab_size)
        extra["condition_map"] = maps.to(device)
    tokens = make_sampler(model, compile_layers=args.compile_layers)(labels, sampling, torch.Generator(device).manual_seed(args.seed),
                                                  **extra)
    pixels = tokens_to_view(tokens, model.config.grid_size, vq, model.config.vocab_size)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_image(pixels, args.out, nrow=args.samples_per_class if args.samples_per_class > 1 else len(labels), padding=2)
    print(f"saved {len(labels)} samples to {args.out}")

if __name__ == "__main__":
    run_main(lambda argv: main(get_args_parser().parse_args(argv)))

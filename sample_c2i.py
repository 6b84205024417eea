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
from autoregressive.models.arpg import ARPG_models
from autoregressive.pretrained import with_checkpoints_fetched
from autoregressive.render import tokens_to_view
from autoregressive.sampling import SamplingConfig, add_sampling_args
from autoregressive.utils.cli import (UserError, check_at_least, check_at_most, check_file, check_image_output,
                                      run_main)
from autoregressive.utils.device import resolve_device
from autoregressive.weights import PRECISIONS, add_weights_arg, load_gpt, load_vq
from dataset.conditions import add_condition_args, check_condition_args, load_condition_map


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Sample a PNG grid from an ARPG checkpoint.")
    parser.add_argument("--gpt-model", choices=list(ARPG_models), default="ARPG-L")
    parser.add_argument("--gpt-ckpt", default=None,
                        help="a file, hf://owner/repo/file[@revision], or omitted: the released weights of "
                             "--gpt-model from the Hugging Face Hub")
    add_weights_arg(parser)
    parser.add_argument("--vq-model", default="VQ-16")
    parser.add_argument("--vq-ckpt", default=None, help="VQ tokenizer checkpoint (a file or hf://...); omitted: the "
                        "released VQ-16 for ARPG-L/XL/XXL, none for the digits model")
    parser.add_argument("--class-labels", type=int, nargs="+", default=[207, 360, 387, 974, 88, 979, 417, 279])
    parser.add_argument("--samples-per-class", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=list(PRECISIONS), default="none")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--downsample-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=None, help="default: the model size's")
    parser.add_argument("--codebook-size", type=int, default=None, help="default: the model size's")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--out", default="samples/grid.png")
    parser.add_argument("--fused", action="store_true",
                        help="compile the layers too (CUDA): faster, logits close to, not equal to, the eager layers'")
    add_condition_args(parser)
    return add_sampling_args(parser)


def check_args(args) -> None:
    """Refuse bad flags before any model is built."""
    check_file("--gpt-ckpt", args.gpt_ckpt)
    check_file("--vq-ckpt", args.vq_ckpt)
    for flag in ("--samples-per-class", "--image-size", "--downsample-size", "--num-classes", "--codebook-size"):
        check_at_least(flag, getattr(args, flag[2:].replace("-", "_")), 1)
    for label in args.class_labels:
        check_at_least("--class-labels", label, 0)
    if args.image_size % args.downsample_size:
        raise UserError(f"--image-size {args.image_size} is not a multiple of --downsample-size {args.downsample_size}")
    check_image_output("--out", args.out)
    check_condition_args(args)


def main(args) -> None:
    check_args(args)
    sampling = SamplingConfig.from_args(args)
    args = with_checkpoints_fetched(args)  # hf:// paths and omitted checkpoints -> local files
    device = resolve_device(args.device)
    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("vocab_size", args.codebook_size),
                                   ("condition_vocab_size", args.condition_vocab_size)) if v}
    if args.vq_ckpt:
        overrides["block_size"] = (args.image_size // args.downsample_size) ** 2
    model = load_gpt(args.gpt_model, args.gpt_ckpt, device, args.precision, args.weights, **overrides)
    labels = torch.tensor(args.class_labels, device=device).repeat_interleave(args.samples_per_class)
    check_class_ids(labels, model.config.num_classes)
    check_at_most("--step", args.step, model.config.block_size, "the number of tokens of an image")
    extra = {}
    if args.condition_map:
        maps = load_condition_map(args.condition_map, len(labels), model.config.block_size, args.condition_vocab_size)
        extra["condition_map"] = maps.to(device)
    tokens = make_sampler(model, fuse=args.fused)(labels, sampling, torch.Generator(device).manual_seed(args.seed),
                                                  **extra)
    vq = load_vq(args.vq_model, args.vq_ckpt, device) if args.vq_ckpt else None
    pixels = tokens_to_view(tokens, model.config.grid_size, vq, model.config.vocab_size)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_image(pixels, args.out, nrow=args.samples_per_class if args.samples_per_class > 1 else len(labels), padding=2)
    print(f"saved {len(labels)} samples to {args.out}")

if __name__ == "__main__":
    run_main(lambda argv: main(get_args_parser().parse_args(argv)))

"""Zero-shot editing: inpaint, outpaint, class-edit or expand an image (or token grid) with ARPG.

    python edit_c2i.py --task inpaint --gpt-model ARPG-L --gpt-ckpt arpg_300m.pt --vq-ckpt vq_ds16_c2i.pt \\
        --image photo.png --shape center --class-label 207 --num-samples 4 --out edit.png
    python edit_c2i.py --task inpaint --gpt-model ARPG-digits --gpt-ckpt digits.pt --digit-index 3 --shape bottom

A controllable model regenerates the area under a condition map (--condition-map, --condition-vocab-size;
the kept tokens stay as they are whatever the map says there).

Writes one PNG row: the input, the mask (regenerated area darkened) and the results.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from autoregressive import editing
from autoregressive.fast_generate import make_sampler
from autoregressive.model_args import add_model_args, check_model_args, model_from_args
from autoregressive.render import tokens_to_view
from autoregressive.sampling import SamplingConfig, add_sampling_args
from autoregressive.utils.cli import (UserError, check_at_least, check_at_most, check_file, check_image_output,
                                      run_main)
from autoregressive.utils.device import resolve_device
from dataset.conditions import add_condition_args, check_condition_args, load_condition_map

TASKS = ("inpaint", "outpaint", "class-edit", "expand")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Zero-shot editing with ARPG.")
    parser.add_argument("--task", choices=TASKS, required=True)
    add_model_args(parser, sizes=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="a picture, ADM centre-cropped to --image-size and encoded")
    source.add_argument("--codes", help="a .npy of (N,) or (g, g) tokens")
    source.add_argument("--digit-index", type=int, help="digits model: the i-th held-out real digit")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--box", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="region to regenerate")
    parser.add_argument("--box-units", choices=["tokens", "pixels"], default="tokens")
    parser.add_argument("--mask-png", help="grey-scale PNG, white = regenerate")
    parser.add_argument("--shape", choices=editing.SHAPES, help="built-in region to regenerate")
    parser.add_argument("--border-width", type=int, default=1, help="tokens, for --shape border")
    parser.add_argument("--class-label", type=int, default=None, help="class to generate under (digits: the digit's own)")
    parser.add_argument("--out-size", type=int, default=None, help="expand: tokens per side of the new canvas")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--out", default="samples/edit.png")
    add_condition_args(parser)
    return add_sampling_args(parser, num_steps=16)


def check_args(args) -> int:
    """Refuse bad flags before any model is built; returns the condition vocabulary (0: none)."""
    check_model_args(args)
    for flag, path in (("--image", args.image), ("--codes", args.codes), ("--mask-png", args.mask_png)):
        check_file(flag, path)
    for flag in ("--num-samples", "--image-size", "--border-width", "--out-size"):
        check_at_least(flag, getattr(args, flag[2:].replace("-", "_")), 1)
    check_at_least("--digit-index", args.digit_index, 0)
    check_at_least("--class-label", args.class_label, 0)
    masks = sum(x is not None for x in (args.box, args.mask_png, args.shape))
    if args.task != "expand" and masks != 1:
        raise UserError(f"--task {args.task} needs exactly one mask: --box, --mask-png or --shape")
    if args.task == "expand" and masks:
        raise UserError("--task expand takes no mask (it fills the new border); drop --box, --mask-png and --shape")
    if args.task == "expand" and args.condition_map:
        raise UserError("--task expand fills a canvas larger than the model's grid, which a --condition-map does not "
                        "cover; condition inpaint, outpaint or class-edit")
    check_image_output("--out", args.out)
    return check_condition_args(args)


def load_source(args, model, vq, device):
    """-> (tokens (g, g) long, class label or None)."""
    grid = model.config.grid_size
    if args.digit_index is not None:
        from dataset.digits import load_digits_split

        images, labels = load_digits_split("val")
        if args.digit_index >= len(images):
            raise UserError(f"--digit-index {args.digit_index} is out of range: there are {len(images)} held-out "
                            f"digits (0..{len(images) - 1})")
        return torch.from_numpy(images[args.digit_index]).view(grid, grid).to(device), int(labels[args.digit_index])
    if args.codes:
        return read_code_grid(args.codes, grid, model.config.vocab_size).to(device), None
    if vq is None:
        raise UserError("--image needs --vq-ckpt to encode the picture into tokens")
    from PIL import Image, UnidentifiedImageError

    from dataset.transforms import center_crop_adm, to_model_input

    try:
        picture = Image.open(args.image).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"--image {args.image} is not a readable picture ({error})") from error
    pixels = torch.from_numpy(to_model_input(center_crop_adm(picture, args.image_size)))
    return vq.encode_to_indices(pixels[None].to(device)).view(grid, grid), None


def read_code_grid(path: str, grid: int, vocab_size: int) -> torch.Tensor:
    """A .npy of (g*g,) or (g, g) token ids of this model -> (g, g) long, refused with the reason otherwise."""
    try:
        codes = np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise UserError(f"--codes {path} is not a readable .npy file ({error})") from error
    if not np.issubdtype(codes.dtype, np.integer):
        raise UserError(f"--codes {path} holds {codes.dtype} values; token ids must be integers")
    if codes.shape not in ((grid * grid,), (grid, grid)):
        raise UserError(f"--codes {path} has shape {codes.shape}; this model's grid needs ({grid * grid},) or "
                        f"({grid}, {grid}) tokens")
    if codes.min() < 0 or codes.max() >= vocab_size:
        raise UserError(f"--codes {path} holds token ids {codes.min()}..{codes.max()}, outside this model's "
                        f"vocabulary 0..{vocab_size - 1}")
    return torch.from_numpy(codes.astype(np.int64)).view(grid, grid)


def keep_mask(args, grid: int, downsample: int) -> torch.Tensor:
    """The (g, g) keep-mask of the one mask flag given (check_args made sure there is one)."""
    if args.box:
        box = editing.pixel_box_to_tokens(args.box, downsample) if args.box_units == "pixels" else args.box
        return editing.box_mask(grid, *box)
    if args.mask_png:
        return editing.mask_from_png(args.mask_png, grid)
    return editing.shape_mask(args.shape, grid, args.border_width)


def render(tokens: torch.Tensor, vq, model) -> torch.Tensor:
    """(B, g, g) tokens -> (B, 3, H, W) floats in [0, 1] (digits enlarged for viewing)."""
    return tokens_to_view(tokens.reshape(len(tokens), -1), tokens.shape[-1], vq, model.config.vocab_size)


def condition_maps(args, model, device) -> dict:
    """{"condition_map": (num_samples, N) long} for --condition-map, else {}: the sampler's keyword."""
    if not args.condition_map:
        return {}
    config = model.config
    maps = load_condition_map(args.condition_map, args.num_samples, config.block_size, config.condition_vocab_size)
    return {"condition_map": maps.to(device)}


def main(args) -> None:
    condition_vocab_size = check_args(args)
    sampling = SamplingConfig.from_args(args)
    device = resolve_device(args.device)
    model, vq = model_from_args(args, device, condition_vocab_size=condition_vocab_size)
    check_at_most("--step", args.step, model.config.block_size, "the number of tokens of an image")
    tokens, own_label = load_source(args, model, vq, device)
    label = args.class_label if args.class_label is not None else own_label
    if label is None:
        raise UserError("--class-label is required for this input")
    generator = torch.Generator(device).manual_seed(args.seed)
    decode, extra = make_sampler(model), condition_maps(args, model, device)
    sample = lambda labels, known, known_mask: decode(labels, sampling, generator, known=known, known_mask=known_mask,
                                                      **extra)
    grid = model.config.grid_size
    if args.task == "expand":
        results = editing.expand(sample, tokens, args.out_size or grid * 3 // 2, label, args.num_samples)
        canvases = render(results, vq, model)
        original = render(tokens[None], vq, model)
        scale, size = original.shape[-1] // grid, results.shape[-1]
        before, after = (size - grid) // 2 * scale, (size - grid - (size - grid) // 2) * scale
        tiles = [F.pad(original, [before, after, before, after]), canvases]  # the input where expand put it
    else:
        keep = keep_mask(args, grid, args.image_size // grid if vq is not None else 1).to(device)
        results = editing.fill(sample, tokens, keep, label, args.num_samples).view(-1, grid, grid)
        original = render(tokens[None], vq, model)
        scale = original.shape[-1] // grid
        shade = F.interpolate(keep[None, None].float(), scale_factor=scale, mode="nearest")
        tiles = [original, original * (0.25 + 0.75 * shade), render(results, vq, model)]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    save_image(torch.cat(tiles), args.out, nrow=len(torch.cat(tiles)), padding=2)
    print(f"saved {args.task} of {args.num_samples} samples to {args.out}")


if __name__ == "__main__":
    run_main(lambda argv: main(get_args_parser().parse_args(argv)))

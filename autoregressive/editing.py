"""Zero-shot editing with ARPG: every task is "keep these tokens, generate the others".

Inpainting, outpainting and class editing hand known tokens and a keep-mask to the decoding loop;
resolution expansion fills a larger canvas window by window, each window a model-sized crop that
overlaps tokens already made. Masks are (g, g) bool grids, True where the token is kept.
"""
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from autoregressive.utils.cli import UserError

SHAPES = ("center", "left", "right", "top", "bottom", "border")


def box_mask(grid: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """Keep everything but the box [y0, y1) x [x0, x1) (token units, x = column)."""
    if not (0 <= x0 < x1 <= grid and 0 <= y0 < y1 <= grid):
        raise UserError(f"box ({x0}, {y0}, {x1}, {y1}) must be a non-empty region inside the {grid}x{grid} token grid")
    keep = torch.ones(grid, grid, dtype=torch.bool)
    keep[y0:y1, x0:x1] = False
    return keep


def pixel_box_to_tokens(box: Tuple[int, int, int, int], downsample: int) -> Tuple[int, int, int, int]:
    """A pixel box -> the token box covering it."""
    x0, y0, x1, y1 = box
    return x0 // downsample, y0 // downsample, -(-x1 // downsample), -(-y1 // downsample)


def shape_mask(name: str, grid: int, width: int = 1) -> torch.Tensor:
    """Built-in regions to regenerate: the centre (half the side), a half, or a border of `width` tokens."""
    half, quarter = grid // 2, grid // 4
    boxes = {"center": (quarter, quarter, grid - quarter, grid - quarter), "left": (0, 0, half, grid),
             "right": (half, 0, grid, grid), "top": (0, 0, grid, half), "bottom": (0, half, grid, grid)}
    if name in boxes:
        return box_mask(grid, *boxes[name])
    if name != "border":
        raise UserError(f"unknown mask shape {name!r}; choose one of {SHAPES}")
    if not 0 < width < grid / 2:
        raise UserError(f"border width must be in [1, {(grid - 1) // 2}] for a {grid}x{grid} grid, got {width}")
    keep = torch.zeros(grid, grid, dtype=torch.bool)
    keep[width:grid - width, width:grid - width] = True
    return keep


def mask_from_png(path: str, grid: int) -> torch.Tensor:
    """A grey-scale PNG, white = regenerate, averaged over each token's area. Any size of the grid's
    (square) aspect is accepted; another aspect would be stretched, so it is refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("L")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"mask {path} is not a readable picture ({error})") from error
    if image.width != image.height:
        raise UserError(f"mask {path} is {image.width}x{image.height}, but the token grid is {grid}x{grid}: "
                        "give a square mask (the image's crop), it would be stretched otherwise")
    grey = np.asarray(image.resize((grid, grid), Image.BOX), dtype=np.float32) / 255
    return torch.from_numpy(grey <= 0.5)


def fill(sample: Callable, tokens: torch.Tensor, keep: torch.Tensor, label: int, num_samples: int) -> torch.Tensor:
    """Regenerate the tokens where keep is False, num_samples times; tokens (N,) or (g, g).

    sample(labels (B,), known (B, N), known_mask (B, N)) -> (B, N) is the decoding call (with its sampling
    settings and generator). Returns (num_samples, N)."""
    tokens, keep = tokens.reshape(-1), keep.reshape(-1).to(tokens.device)
    if tokens.shape != keep.shape:
        raise UserError(f"the mask has {keep.numel()} positions but the image has {tokens.numel()} tokens")
    if keep.all():
        raise UserError("the mask keeps every token: there is nothing to regenerate")
    labels = torch.full((num_samples,), label, dtype=torch.long, device=tokens.device)
    return sample(labels, tokens.expand(num_samples, -1), keep.expand(num_samples, -1))


def expansion_windows(canvas: int, window: int, stride: int) -> List[Tuple[int, int]]:
    """Top-left corners of windows covering the canvas, nearest to the centre first."""
    starts = sorted(set(list(range(0, canvas - window + 1, stride)) + [canvas - window]))
    centre = (canvas - window) / 2
    return sorted(((top, left) for top in starts for left in starts),
                  key=lambda corner: (abs(corner[0] - centre) + abs(corner[1] - centre), corner))


def expand(sample: Callable, tokens: torch.Tensor, out_size: int, label: int, num_samples: int,
           stride: Optional[int] = None) -> torch.Tensor:
    """Grow (g, g) tokens, placed at the centre, into (num_samples, out_size, out_size) tokens: each
    window is a g x g crop generated with the model's own positions around the tokens already made."""
    grid = tokens.shape[-1]
    if out_size <= grid:
        raise UserError(f"--out-size {out_size} must exceed the model's grid of {grid} tokens")
    stride = stride or max(1, grid // 2)
    canvas = torch.full((num_samples, out_size, out_size), -1, dtype=torch.long, device=tokens.device)
    offset = (out_size - grid) // 2
    canvas[:, offset:offset + grid, offset:offset + grid] = tokens.reshape(grid, grid)
    labels = torch.full((num_samples,), label, dtype=torch.long, device=tokens.device)
    for top, left in expansion_windows(out_size, grid, stride):
        crop = canvas[:, top:top + grid, left:left + grid]
        keep = crop >= 0
        if keep.all():
            continue
        known = crop.clamp(min=0).reshape(num_samples, -1)
        canvas[:, top:top + grid, left:left + grid] = sample(labels, known, keep.reshape(num_samples, -1)).view_as(crop)
    return canvas

"""Canny edge maps as condition tokens on the VQ token grid (the ImageNet recipe of controllable generation).

Each token covers a (downsample x downsample) patch; the patch is cut into 2 x 2 cells and each cell
is one bit, set when an edge pixel falls in it. A token's condition id is the 4-bit pattern
(top-left 1, top-right 2, bottom-left 4, bottom-right 8), a vocabulary of 16: coarse, but it keeps
where the edges run inside each patch, which a per-token edge density would lose.

    python -m dataset.edges photo.png --out photo_edges.npy   # one map for sample_c2i.py --condition-map
"""
import argparse

import numpy as np
from PIL import Image
from scipy import ndimage

from autoregressive.utils.cli import UserError, check_file, run_main

CELLS = 2  # cells per token side
EDGE_VOCAB_SIZE = 2 ** (CELLS * CELLS)
# Hysteresis thresholds on the Sobel magnitude of a [0, 1] grey image: cv2.Canny(image, 100, 200) on
# 0..255 images (ControlNet's and ControlAR's setting), rescaled.
LOW, HIGH = 100 / 255, 200 / 255


def canny(grey: np.ndarray, sigma: float = 1.0, low: float = LOW, high: float = HIGH) -> np.ndarray:
    """(H, W) grey levels in [0, 1] -> (H, W) bool edges: Gaussian smoothing, Sobel gradients, thinning
    to the local maxima along the gradient, then hysteresis (weak edges kept when they touch a strong one)."""
    smooth = ndimage.gaussian_filter(np.asarray(grey, dtype=np.float64), sigma)
    gx, gy = ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)
    magnitude = np.hypot(gx, gy)
    direction = ((np.rad2deg(np.arctan2(gy, gx)) % 180 + 22.5) // 45).astype(int) % 4  # 0, 45, 90, 135 degrees
    padded, (height, width) = np.pad(magnitude, 1), magnitude.shape
    is_peak = np.zeros(magnitude.shape, dtype=bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):  # y grows downwards, as arctan2's gy
        ahead = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        behind = padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        is_peak |= (direction == index) & (magnitude >= ahead) & (magnitude > behind)
    thin = np.where(is_peak, magnitude, 0.0)
    components, _ = ndimage.label(thin >= low, structure=np.ones((3, 3)))
    strong_components = np.unique(components[thin >= high])
    return np.isin(components, strong_components[strong_components > 0])


def edge_tokens(edges: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) bool edges -> (grid * grid,) int64 condition ids in raster order (see the module docstring)."""
    height, width = edges.shape
    if height % (grid * CELLS) or width % (grid * CELLS):
        raise UserError(f"a {height}x{width} edge map does not split into {grid}x{grid} tokens of {CELLS}x{CELLS} cells")
    cells = edges.reshape(grid, CELLS, height // (grid * CELLS), grid, CELLS, width // (grid * CELLS)).any(axis=(2, 5))
    bits = cells.transpose(0, 2, 1, 3).reshape(grid * grid, CELLS * CELLS)  # (token, cell) in raster order each
    return (bits * (1 << np.arange(CELLS * CELLS))).sum(axis=1).astype(np.int64)


def image_edge_tokens(image: Image.Image, grid: int) -> np.ndarray:
    """An RGB crop (the view that was encoded) -> its (grid * grid,) edge condition ids."""
    grey = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    return edge_tokens(canny(grey), grid)


def main(argv=None):
    from dataset.transforms import center_crop_adm
    from dataset.images import open_rgb

    parser = argparse.ArgumentParser(description="An image's Canny edge condition map, for sample_c2i.py --condition-map.")
    parser.add_argument("image")
    parser.add_argument("--out", required=True, help=".npy of (grid * grid,) condition ids")
    parser.add_argument("--image-size", type=int, default=256, help="ADM centre crop size, as the codes were made")
    parser.add_argument("--downsample-size", type=int, default=16)
    args = parser.parse_args(argv)
    check_file("image", args.image)
    if args.image_size % (2 * args.downsample_size):
        raise UserError(f"--image-size {args.image_size} must be a multiple of twice --downsample-size {args.downsample_size}")
    crop = center_crop_adm(open_rgb(args.image), args.image_size)
    tokens = image_edge_tokens(crop, args.image_size // args.downsample_size)
    np.save(args.out, tokens)
    print(f"saved {args.out}: {tokens.size} edge condition ids, {int((tokens > 0).sum())} tokens with edges")


if __name__ == "__main__":
    run_main(main)

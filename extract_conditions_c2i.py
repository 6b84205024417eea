"""Canny edge condition maps of an ImageNet-style folder, cached beside its codes (dataset/conditions.py).

Walks the folder exactly as extract_codes_c2i.py does (same image order, same views: centre crop and
its flip, or --ten-crop), so `{condition_path}/{class}/{index}.npy` (A, N) pairs row by row with the
code file of the same name. CPU only, sharded over torchrun ranks, skips files already written.

    torchrun --nproc_per_node=16 extract_conditions_c2i.py --data-path /data/imagenet/train \\
        --condition-path data/imagenet-llamagen-adm-256_canny
"""
import argparse
import os

import numpy as np
from torchvision.datasets import ImageFolder

from autoregressive.utils.cli import InputNotFound, UserError, check_at_least, run_main
from autoregressive.utils.dist import cleanup, init_distributed
from autoregressive.utils.logger import get_logger
from dataset.conditions import ConditionInfo, write_condition_info
from dataset.edges import EDGE_VOCAB_SIZE, image_edge_tokens
from dataset.images import extract_views, open_image_folder


def extract(folder: ImageFolder, condition_path: str, rank: int, world_size: int, image_size: int, grid: int,
            ten_crop: bool = False, crop_range: float = 1.1) -> int:
    """Write this rank's share of the edge maps; returns how many files it wrote."""
    return extract_views(lambda views: np.stack([image_edge_tokens(view, grid) for view in views]), folder,
                         condition_path, rank, world_size, image_size, ten_crop, crop_range)


def check_args(args) -> None:
    """Refuse bad flags before any file is written."""
    if not os.path.isdir(args.data_path):
        raise InputNotFound(f"--data-path {args.data_path}: folder not found; pass an ImageNet-style {{root}}/{{synset}}/ folder")
    check_at_least("--image-size", args.image_size, 1)
    check_at_least("--downsample-size", args.downsample_size, 1)
    if args.image_size % (2 * args.downsample_size):
        raise UserError(f"--image-size {args.image_size} must be a multiple of twice --downsample-size "
                        f"{args.downsample_size} (each token's patch is cut into 2x2 cells)")
    if args.ten_crop and args.crop_range < 1:
        raise UserError(f"--crop-range must be >= 1 (the crop grows by this factor before ten-crop), got {args.crop_range}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Canny edge condition maps of an image folder, beside its codes.")
    parser.add_argument("--data-path", required=True, help="ImageNet-style folder: {root}/{synset}/{image}")
    parser.add_argument("--condition-path", required=True, help="output folder (pass it to train_c2i.py --condition-path)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--downsample-size", type=int, default=16, help="pixels per token side, as the VQ's")
    parser.add_argument("--ten-crop", action="store_true", help="10 views, as extract_codes_c2i.py --ten-crop")
    parser.add_argument("--crop-range", type=float, default=1.1)
    args = parser.parse_args(argv)
    check_args(args)
    info = init_distributed("cpu")
    grid = args.image_size // args.downsample_size
    if info.is_main:
        write_condition_info(args.condition_path, ConditionInfo("canny-edges", EDGE_VOCAB_SIZE, grid))
    folder = open_image_folder(args.data_path)
    written = extract(folder, args.condition_path, info.rank, info.world_size, args.image_size, grid,
                      args.ten_crop, args.crop_range)
    get_logger("arpg.extract", rank=info.rank).info(
        f"rank {info.rank}: wrote {written} condition files to {args.condition_path} ({len(folder)} images in all)")
    cleanup()


if __name__ == "__main__":
    run_main(main)

"""Encode an ImageNet-style folder ({root}/{synset}/{image}) into VQ codes in RandAR's layout
{code_path}/{class}/{index}.npy, each (A, N) int64: A = 2 (ADM centre crop, its horizontal flip) or
10 with --ten-crop. Shards over torchrun ranks (rank r takes images r, r+W, ...) and skips files
already written, so a killed run resumes.

    torchrun --nproc_per_node=8 extract_codes_c2i.py --data-path /data/imagenet/train \\
        --code-path data/imagenet-llamagen-adm-256_codes --vq-ckpt vq_ds16_c2i.pt
"""
import argparse
import os
import numpy as np
import torch
from torchvision.datasets import ImageFolder

from autoregressive.utils.cli import InputNotFound, UserError, check_at_least, check_file, run_main
from autoregressive.utils.dist import cleanup, init_distributed
from autoregressive.utils.logger import get_logger
from dataset.images import extract_views, open_image_folder
from dataset.transforms import to_model_input


@torch.no_grad()
def encode_views(vq, views, device) -> np.ndarray:
    """PIL views -> (A, N) int64 codes."""
    pixels = torch.from_numpy(np.stack([to_model_input(view.convert("RGB")) for view in views])).to(device)
    return vq.encode_to_indices(pixels).cpu().numpy().astype(np.int64)


def extract(vq, folder: ImageFolder, code_path: str, rank: int, world_size: int, device, image_size: int,
            ten_crop: bool = False, crop_range: float = 1.1) -> int:
    """Encode this rank's share of the folder; returns how many files it wrote."""
    return extract_views(lambda views: encode_views(vq, views, device), folder, code_path, rank, world_size,
                         image_size, ten_crop, crop_range)


def check_args(args) -> None:
    """Refuse bad flags before the tokenizer is loaded or any code file written."""
    if not os.path.isdir(args.data_path):
        raise InputNotFound(f"--data-path {args.data_path}: folder not found; pass an ImageNet-style {{root}}/{{synset}}/ folder")
    check_file("--vq-ckpt", args.vq_ckpt)
    check_at_least("--image-size", args.image_size, 1)
    downsample = int(args.vq_model.split("-")[1])  # VQ-16, VQ-8
    if args.image_size % downsample:
        raise UserError(f"--image-size {args.image_size} must be a multiple of {downsample} ({args.vq_model}'s downsampling)")
    if args.ten_crop and args.crop_range < 1:
        raise UserError(f"--crop-range must be >= 1 (the crop grows by this factor before ten-crop), got {args.crop_range}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Encode an image folder into VQ codes (RandAR layout).")
    parser.add_argument("--data-path", required=True, help="ImageNet-style folder: {root}/{synset}/{image}")
    parser.add_argument("--code-path", required=True)
    parser.add_argument("--vq-model", choices=["VQ-16", "VQ-8"], default="VQ-16")
    parser.add_argument("--vq-ckpt", required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--ten-crop", action="store_true", help="10 views (5 crops and flips) instead of 2")
    parser.add_argument("--crop-range", type=float, default=1.1, help="--ten-crop: centre crop size factor")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = parser.parse_args(argv)
    check_args(args)
    from autoregressive.weights import load_vq

    info = init_distributed(args.device)
    logger = get_logger("arpg.extract", rank=info.rank)
    folder = open_image_folder(args.data_path)
    vq = load_vq(args.vq_model, args.vq_ckpt, info.device)
    written = extract(vq, folder, args.code_path, info.rank, info.world_size, info.device, args.image_size,
                      args.ten_crop, args.crop_range)
    logger.info(f"rank {info.rank}: wrote {written} code files to {args.code_path} ({len(folder)} images in all)")
    cleanup()


if __name__ == "__main__":
    run_main(main)

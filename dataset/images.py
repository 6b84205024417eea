"""Image folders as the extraction scripts read them: an ImageNet-style {root}/{synset}/{image} folder, the
views encoded of each image (the ADM centre crop and its flip, or ten crops), and one output file per image
written by the rank that owns it (extract_codes_c2i.py's codes, extract_conditions_c2i.py's edge maps)."""
import os
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.transforms import functional as TF

from autoregressive.utils.cli import UserError
from dataset.codes import save_npy_atomic
from dataset.transforms import center_crop_adm


def augmentations(image: Image.Image, size: int, ten_crop: bool, crop_range: float):
    """The views to encode: [centre crop, its flip], or TenCrop of a crop_range-larger centre crop."""
    if ten_crop:
        return list(TF.ten_crop(center_crop_adm(image, int(size * crop_range)), size))
    crop = center_crop_adm(image, size)
    return [crop, crop.transpose(Image.FLIP_LEFT_RIGHT)]


def open_rgb(path: str) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"image {path} is unreadable ({error}); delete or replace it and run again (finished "
                        "code files are kept)") from error


def output_file(out_path: str, label: int, index: int) -> str:
    """{out_path}/{label}/{index}.npy: the file one image's views are written to."""
    return os.path.join(out_path, str(label), f"{index}.npy")


def open_image_folder(path: str) -> ImageFolder:
    try:
        return ImageFolder(path)
    except FileNotFoundError as error:  # no class folders, or no images in them
        raise UserError(f"--data-path {path}: {error}") from error


def extract_views(encode: Callable[[list], np.ndarray], folder: ImageFolder, out_path: str, rank: int,
                  world_size: int, image_size: int, ten_crop: bool = False, crop_range: float = 1.1) -> int:
    """For this rank's share of the folder, write encode(the image's views) as {out_path}/{label}/{index}.npy,
    skipping files that exist (so a rerun resumes); returns how many files it wrote."""
    written = 0
    for index in range(rank, len(folder), world_size):
        path, label = folder.samples[index]
        target = output_file(out_path, label, index)
        if os.path.exists(target):
            continue
        views = augmentations(open_rgb(path), image_size, ten_crop, crop_range)
        save_npy_atomic(target, encode(views))
        written += 1
    return written

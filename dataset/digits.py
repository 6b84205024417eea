"""The embedded dataset of the CPU demo: scikit-learn's handwritten digits as ARPG tokens.

1,797 images of 8x8 pixels with grey levels 0..16, used directly as 17 tokens, 10 classes. A fixed
stratified 80/20 split; both parts are written in the RandAR layout `{split}/{class}/{index}.npy`
with one augmentation, (1, 64): no flip, since a mirrored digit is another shape. Beside each split,
`{split}_shape/` holds its condition maps for controllable generation (dataset/conditions.py): the
binarised digit, 1 where the grey level is at least half of the maximum, else 0.

    python -m dataset.digits --out data/digits
"""
import argparse
import os
from typing import Tuple

import numpy as np

from autoregressive.utils.cli import UserError, run_main
from dataset.codes import save_npy_atomic
from dataset.conditions import ConditionInfo, write_condition_info

DIGITS_VOCAB_SIZE = 17
DIGITS_NUM_CLASSES = 10
DIGITS_GRID = 8
SPLIT_SEED = 0
SHAPE_THRESHOLD = 8  # grey levels 0..16: a pixel at least this bright belongs to the digit's shape
SHAPE_INFO = ConditionInfo(kind="digit-shape", vocab_size=2, grid=DIGITS_GRID)


def digit_shapes(images: np.ndarray) -> np.ndarray:
    """(..., 64) grey levels 0..16 -> (..., 64) int64 condition ids: 1 on the digit's shape, 0 elsewhere."""
    return (np.asarray(images) >= SHAPE_THRESHOLD).astype(np.int64)


def load_digits_split(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """('train' | 'val') -> images (M, 64) int64 in 0..16, labels (M,) int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "val"):
        raise UserError(f"unknown digits split {split!r}; choose 'train' or 'val'")
    images, labels = load_digits(return_X_y=True)
    parts = train_test_split(images.astype(np.int64), labels.astype(np.int64), test_size=0.2,
                             stratify=labels, random_state=SPLIT_SEED)
    train_images, val_images, train_labels, val_labels = parts
    return (train_images, train_labels) if split == "train" else (val_images, val_labels)


def write_digits(out_dir: str) -> Tuple[str, str]:
    """Write both splits and their shape conditions (`{split}_shape/`) under out_dir; returns (train_dir,
    val_dir). Rewriting gives the same files."""
    dirs = []
    for split in ("train", "val"):
        images, labels = load_digits_split(split)
        split_dir, shape_dir = os.path.join(out_dir, split), os.path.join(out_dir, f"{split}_shape")
        for index, (image, label) in enumerate(zip(images, labels)):
            name = os.path.join(str(int(label)), f"{index}.npy")
            save_npy_atomic(os.path.join(split_dir, name), image.reshape(1, -1))
            save_npy_atomic(os.path.join(shape_dir, name), digit_shapes(image).reshape(1, -1))
        write_condition_info(shape_dir, SHAPE_INFO)
        dirs.append(split_dir)
    return dirs[0], dirs[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the digits demo dataset in the RandAR code layout.")
    parser.add_argument("--out", default="data/digits", help="output folder (gets train/ and val/)")
    args = parser.parse_args(argv)
    if os.path.isfile(args.out):
        raise UserError(f"--out {args.out} is a file; pass a folder (it gets train/ and val/)")
    train_dir, val_dir = write_digits(args.out)
    print(f"digits written: {train_dir} ({len(load_digits_split('train')[1])} images), "
          f"{val_dir} ({len(load_digits_split('val')[1])} images), shape conditions in {train_dir}_shape, "
          f"{val_dir}_shape")


if __name__ == "__main__":
    run_main(main)

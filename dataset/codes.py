"""Datasets of pre-encoded VQ codes.

Two layouts:
- `FolderCodes`: RandAR's `imagenet-llamagen-adm-256_codes` (the one the official README points to):
  `{root}/{class}/{index}.npy`, each (A, N) int64 with A augmentations (2 there: original, flip).
- `LlamaGenCodes`: LlamaGen's extract_codes output, `{root}/*_codes/{i}.npy` of shape (1, A, N) with the
  label in the sibling `*_labels/{i}.npy` of shape (1,).

One augmentation is drawn per sample from (seed, epoch, index), never from worker RNG, so a resumed
run reads exactly what an uninterrupted one would.
"""
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from autoregressive.utils.cli import InputNotFound, UserError
from autoregressive.utils.files import write_atomic


def augmentation_index(seed: int, epoch: int, index: int, num_augmentations: int) -> int:
    """The augmentation a sample uses in an epoch: a pure function of (seed, epoch, index)."""
    if num_augmentations == 1:
        return 0
    return int(np.random.default_rng([seed, epoch, index]).integers(num_augmentations))


def read_codes(path: str, expected_ndim: int) -> np.ndarray:
    """Load one .npy code file, with an error naming the file if it is unreadable or malformed."""
    try:
        codes = np.load(path)
    except Exception as error:  # a truncated or foreign file raises many kinds of errors
        raise UserError(f"cannot read code file {path}: {error}; re-extract or re-download it") from error
    if codes.ndim != expected_ndim or not np.issubdtype(codes.dtype, np.integer):
        raise UserError(f"malformed code file {path}: expected an integer array with {expected_ndim} dims, "
                        f"got {codes.dtype} {codes.shape}")
    return codes


def check_token_ids(codes: np.ndarray, vocab_size: Optional[int], path: str) -> None:
    """Refuse ids outside 0..vocab_size-1: the loss would fail on some and the embedding table, which
    has extra rows, would silently accept others."""
    if vocab_size is not None and codes.size and (codes.min() < 0 or codes.max() >= vocab_size):
        raise UserError(f"code file {path} holds token ids {codes.min()}..{codes.max()}, outside the vocabulary "
                        f"0..{vocab_size - 1}; pass the --vocab-size the codes were made with, or re-extract them")


def check_label(label: int, num_classes: Optional[int], path: str) -> None:
    """Refuse a class outside 0..num_classes-1 (the id num_classes is the model's "no class" token)."""
    if num_classes is not None and not 0 <= label < num_classes:
        raise UserError(f"{path} has class {label}, outside 0..{num_classes - 1}; pass the right --num-classes")


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """np.save, atomically: readers never see half a file."""
    write_atomic(path, lambda tmp: np.save(tmp, array))


def list_npy(folder: str) -> List[str]:
    return sorted((name for name in os.listdir(folder) if name.endswith(".npy")), key=numeric_key)


def numeric_key(name: str):
    stem = name[:-len(".npy")] if name.endswith(".npy") else name
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def list_class_files(root: str) -> List[Tuple[str, int]]:
    """(path, class) of every `{root}/{class}/{index}.npy`, classes and then indices in numeric order."""
    files = []
    for class_dir in sorted(os.listdir(root), key=numeric_key):
        path = os.path.join(root, class_dir)
        if not os.path.isdir(path):
            continue
        if not class_dir.isdigit():
            raise UserError(f"class folder {path} is not a class number; expected {{root}}/{{class}}/{{i}}.npy")
        files += [(os.path.join(path, name), int(class_dir)) for name in list_npy(path)]
    if not files:
        raise UserError(f"no .npy files under {root}; expected {{root}}/{{class}}/{{i}}.npy")
    return files


class CodesDataset(Dataset):
    """Shared behaviour: one augmentation per (seed, epoch, index); items are (codes (N,), label)."""

    def __init__(self, seed: int, vocab_size: Optional[int] = None, num_classes: Optional[int] = None):
        self.seed = seed
        self.epoch = 0
        self.num_tokens = None
        self.vocab_size, self.num_classes = vocab_size, num_classes  # None: not checked

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pick(self, codes: np.ndarray, index: int, path: str) -> torch.Tensor:
        """codes (A, N) -> (N,) int64 tensor of the augmentation this sample uses this epoch."""
        if self.num_tokens is not None and codes.shape[-1] != self.num_tokens:
            raise UserError(f"malformed code file {path}: {codes.shape[-1]} tokens, the dataset has {self.num_tokens}")
        check_token_ids(codes, self.vocab_size, path)
        row = augmentation_index(self.seed, self.epoch, index, codes.shape[0])
        return torch.from_numpy(codes[row].astype(np.int64))


class FolderCodes(CodesDataset):
    """RandAR layout `{root}/{class}/{index}.npy` with (A, N) arrays; the label is the folder number."""

    def __init__(self, root: str, seed: int = 0, vocab_size: Optional[int] = None, num_classes: Optional[int] = None):
        super().__init__(seed, vocab_size, num_classes)
        if not os.path.isdir(root):
            raise InputNotFound(f"code folder not found: {root}; pass --code-path to the extracted codes")
        self.files = list_class_files(root)
        for path, label in self.files:
            check_label(label, num_classes, os.path.dirname(path))
        first = read_codes(self.files[0][0], 2)
        check_token_ids(first, vocab_size, self.files[0][0])
        self.num_tokens = first.shape[-1]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path, label = self.files[index]
        return self.pick(read_codes(path, 2), index, path), torch.tensor(label, dtype=torch.long)


class LlamaGenCodes(CodesDataset):
    """LlamaGen layout `*_codes/{i}.npy` (1, A, N) with `*_labels/{i}.npy` (1,). Always one augmentation
    per sample: LlamaGen's reader only picks one when the folder name contains "flip" and otherwise
    returns all of them (its issue #21); we do not reproduce that."""

    def __init__(self, root: str, seed: int = 0, vocab_size: Optional[int] = None, num_classes: Optional[int] = None):
        super().__init__(seed, vocab_size, num_classes)
        if not os.path.isdir(root):
            raise InputNotFound(f"code folder not found: {root}; pass --code-path to the extracted codes")
        code_dirs = sorted(name for name in os.listdir(root) if name.endswith("_codes"))
        if len(code_dirs) != 1:
            raise UserError(f"expected exactly one *_codes folder in {root}, found {code_dirs or 'none'}")
        self.code_dir = os.path.join(root, code_dirs[0])
        self.label_dir = os.path.join(root, code_dirs[0][:-len("_codes")] + "_labels")
        if not os.path.isdir(self.label_dir):
            raise InputNotFound(f"label folder not found: {self.label_dir} (sibling of {self.code_dir})")
        self.names = list_npy(self.code_dir)
        if not self.names:
            raise UserError(f"no .npy code files in {self.code_dir}")
        first_path = os.path.join(self.code_dir, self.names[0])
        first = read_codes(first_path, 3)
        check_token_ids(first, vocab_size, first_path)
        self.num_tokens = first.shape[-1]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        path = os.path.join(self.code_dir, self.names[index])
        codes = read_codes(path, 3)[0]  # (A, N)
        label_path = os.path.join(self.label_dir, self.names[index])
        label = int(read_codes(label_path, 1).reshape(-1)[0])
        check_label(label, self.num_classes, label_path)
        return self.pick(codes, index, path), torch.tensor(label, dtype=torch.long)

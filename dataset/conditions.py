"""Condition maps for controllable generation, cached beside the codes.

A condition folder mirrors its code folder file by file: the code file `{code_path}/{rel}.npy` of
shape (A, N) has its condition map at `{condition_path}/{rel}.npy`, (A, N) integer ids, one row per
augmentation of the codes (a flipped crop has a flipped edge map), so a sample reads the same row of
both. `condition.json` in the folder records the kind of condition and its vocabulary size, which
training reads to size the model's condition table. Sampling scripts take the same folders
(ConditionFolder) or a single .npy map through the flags of add_condition_args.
"""
import argparse
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from autoregressive.utils.cli import InputNotFound, UserError, check_at_least, check_file
from autoregressive.utils.files import write_atomic
from dataset.codes import FolderCodes, augmentation_index, list_class_files, read_codes

INFO_FILE = "condition.json"


@dataclass(frozen=True)
class ConditionInfo:
    kind: str  # how the maps were made, e.g. "digit-shape" or "canny-edges"
    vocab_size: int  # condition ids are 0..vocab_size-1; the model adds "no condition" itself
    grid: int  # token grid side: maps have grid * grid entries


def write_condition_info(condition_path: str, info: ConditionInfo) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as file:
            json.dump(asdict(info), file, indent=1)

    write_atomic(os.path.join(condition_path, INFO_FILE), write)


def read_condition_info(condition_path: str) -> ConditionInfo:
    path = os.path.join(condition_path, INFO_FILE)
    if not os.path.isfile(path):
        raise InputNotFound(f"{path} not found: --condition-path must be a folder written by "
                            "python -m dataset.digits or extract_conditions_c2i.py")
    with open(path) as file:
        return ConditionInfo(**json.load(file))


def load_condition_map(path: str, num_samples: int, num_tokens: int, vocab_size: int) -> torch.Tensor:
    """A .npy condition map for sampling -> (num_samples, num_tokens) long ids in [0, vocab_size] (the
    last: no condition there). One map ((N,), (g, g) or a cached (1, N) file) serves every sample;
    (num_samples, N) gives one per sample."""
    try:
        maps = np.load(path)
    except Exception as error:  # a missing, truncated or foreign file raises many kinds of errors
        raise UserError(f"cannot read condition map {path}: {error}") from error
    if not np.issubdtype(maps.dtype, np.integer):
        raise UserError(f"condition map {path} must hold integer ids, got {maps.dtype}")
    flat = maps.reshape(1, -1) if maps.size == num_tokens else maps.reshape(-1, maps.shape[-1])
    if flat.shape[1] != num_tokens or flat.shape[0] not in (1, num_samples):
        raise UserError(f"condition map {path} has shape {maps.shape}; give {num_tokens} ids (one map for every "
                        f"sample) or ({num_samples}, {num_tokens}) (one per sample)")
    if flat.min() < 0 or flat.max() > vocab_size:
        raise UserError(f"condition map {path} holds ids {flat.min()}..{flat.max()}; the model's condition "
                        f"vocabulary is 0..{vocab_size - 1} ({vocab_size}: no condition); check --condition-vocab-size")
    return torch.from_numpy(flat.astype(np.int64)).expand(num_samples, -1).contiguous()


def check_condition_ids(maps: np.ndarray, vocab_size: int, path: str) -> None:
    """Refuse ids of a cached map outside 0..vocab_size-1 (a cached map never says "no condition")."""
    if maps.min() < 0 or maps.max() >= vocab_size:
        raise UserError(f"condition map {path} has ids outside 0..{vocab_size - 1}")


def code_file(codes: Dataset, index: int) -> str:
    """The code file behind sample `index` of a FolderCodes or LlamaGenCodes dataset."""
    if isinstance(codes, FolderCodes):
        return codes.files[index][0]
    return os.path.join(codes.code_dir, codes.names[index])


class ConditionedCodes(Dataset):
    """A code dataset whose items carry their condition map: (codes (N,), label, condition_map (N,))."""

    def __init__(self, codes: Dataset, code_path: str, condition_path: str):
        self.codes, self.code_path, self.condition_path = codes, code_path, condition_path
        self.info = read_condition_info(condition_path)
        self.num_tokens = codes.num_tokens
        if self.info.grid ** 2 != codes.num_tokens:
            raise UserError(f"condition maps in {condition_path} are {self.info.grid}x{self.info.grid}, but the "
                             f"codes have {codes.num_tokens} tokens; extract the conditions for these codes")

    def set_epoch(self, epoch: int) -> None:
        self.codes.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int):
        codes, label = self.codes[index]
        source = code_file(self.codes, index)
        path = os.path.join(self.condition_path, os.path.relpath(source, self.code_path))
        if not os.path.isfile(path):
            raise InputNotFound(f"condition map {path} (for {source}) not found; extract the conditions "
                                "of every code file")
        maps = read_codes(path, 2)
        augmentations = np.load(source, mmap_mode="r").shape[-2]
        if maps.shape != (augmentations, codes.numel()):
            raise UserError(f"condition map {path} is {maps.shape}; its codes need ({augmentations}, {codes.numel()})")
        check_condition_ids(maps, self.info.vocab_size, path)
        row = augmentation_index(self.codes.seed, self.codes.epoch, index, augmentations)
        return codes, label, torch.from_numpy(maps[row].astype(np.int64))


class ConditionFolder:
    """A condition folder read for sampling: its files in sorted order ({class}/{index}.npy), so file i
    gives sample i its class (the folder's name) and its map (the first row: the view without a flip)."""

    def __init__(self, path: str):
        self.path = path
        self.info = read_condition_info(path)
        self.files = list_class_files(path)
        self.labels = torch.tensor([label for _, label in self.files], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def read_maps(self, indices) -> torch.Tensor:
        """The first rows of the files at `indices` -> (len(indices), grid * grid) long ids."""
        rows = []
        for index in indices:
            path = self.files[index][0]
            maps = read_codes(path, 2)
            if maps.shape[1] != self.info.grid ** 2:
                raise UserError(f"condition map {path} has {maps.shape[1]} ids per row; {INFO_FILE} says "
                                f"{self.info.grid}x{self.info.grid}")
            check_condition_ids(maps, self.info.vocab_size, path)
            rows.append(torch.from_numpy(maps[0].astype(np.int64)))
        return torch.stack(rows)


def add_condition_args(parser: argparse.ArgumentParser, with_folder: bool = False) -> None:
    """The flags of a controllable model for a sampling script: --condition-map, --condition-vocab-size
    and, with_folder, --condition-path (one map per sample, read from a condition folder)."""
    group = parser.add_argument_group("controllable generation", "a model trained with --condition-path")
    group.add_argument("--condition-map", default=None,
                       help="controllable model: .npy condition ids on the token grid, one map for all samples "
                            "or one per sample")
    if with_folder:
        group.add_argument("--condition-path", default=None,
                           help="controllable model: a condition folder (extract_conditions_c2i.py, "
                                "python -m dataset.digits); sample i takes its i-th map and that file's class")
    group.add_argument("--condition-vocab-size", type=int, default=0,
                       help="the controllable model's condition vocabulary (its condition.json; digits shapes: 2)"
                            + ("; read from --condition-path's condition.json if omitted" if with_folder else ""))


def check_condition_args(args) -> int:
    """Check the flags of add_condition_args and return the model's condition vocabulary: the flag's, or
    the condition folder's (both given: they must agree); 0 for a model without conditions."""
    folder = getattr(args, "condition_path", None)
    check_file("--condition-map", args.condition_map)
    check_at_least("--condition-vocab-size", args.condition_vocab_size, 0)
    if args.condition_map and folder:
        raise UserError("--condition-map and --condition-path both give the condition maps; pass one of them")
    if folder:
        info = read_condition_info(folder)
        if args.condition_vocab_size and args.condition_vocab_size != info.vocab_size:
            raise UserError(f"--condition-vocab-size {args.condition_vocab_size} disagrees with {folder}/{INFO_FILE} "
                            f"({info.vocab_size}); drop the flag or pass {info.vocab_size}")
        return info.vocab_size
    if args.condition_map and not args.condition_vocab_size:
        raise UserError("--condition-map needs --condition-vocab-size: the controllable model's condition vocabulary "
                        "(its condition.json; 2 for the digits shapes)")
    return args.condition_vocab_size

"""Train ARPG on pre-encoded VQ codes: flags -> TrainConfig -> autoregressive/train/loop.py.

The official command lines work unchanged, e.g.
    torchrun --nproc_per_node=8 train_c2i.py --gpt-model ARPG-L --code-path /data/imagenet-llamagen-adm-256_codes \\
        --epochs 400 --global-batch-size 1024 --lr 4e-4
"""
import argparse
import contextlib
import dataclasses
import os
import shutil
import sys

import torch

from autoregressive.train.config import TrainConfig, add_train_args, train_config_from_args
from autoregressive.train.loop import check_data_fits, find_resume_checkpoint, new_run_dir, train
from autoregressive.train.stopping import STOPPED_EXIT_CODE, ignore_stop_signals
from autoregressive.utils.cli import InputNotFound, UserError, check_file, run_main
from autoregressive.utils.device import enable_tf32, use_deterministic_kernels
from autoregressive.utils.dist import check_shared_folder, cleanup, init_distributed
from autoregressive.utils.files import output_folder

DEFAULTS = TrainConfig(code_path="")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train ARPG (class-conditional) on VQ codes.")
    return add_train_args(parser)  # the flags come from TrainConfig's fields


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return apply_condition_vocabulary(apply_dataset_shape(train_config_from_args(args)))


def apply_condition_vocabulary(cfg: TrainConfig) -> TrainConfig:
    """A run with --condition-path gets the condition vocabulary its folder's condition.json records."""
    if not cfg.condition_path:
        return cfg
    from dataset.conditions import read_condition_info

    return dataclasses.replace(cfg, condition_vocab_size=read_condition_info(cfg.condition_path).vocab_size)


def apply_dataset_shape(cfg: TrainConfig) -> TrainConfig:
    """The digits set fixes vocabulary, classes and grid; contradicting flags are an error."""
    if cfg.dataset != "digits":
        return cfg
    from dataset.digits import DIGITS_GRID, DIGITS_NUM_CLASSES, DIGITS_VOCAB_SIZE

    wanted = {"vocab_size": DIGITS_VOCAB_SIZE, "num_classes": DIGITS_NUM_CLASSES, "image_size": DIGITS_GRID,
              "downsample_size": 1}
    for name, value in wanted.items():
        given = getattr(cfg, name)
        if given not in (value, getattr(DEFAULTS, name)):
            raise UserError(f"--dataset digits has {name.replace('_', '-')} {value}, but {given} was passed")
    return dataclasses.replace(cfg, **wanted)


def run_dir_for(resume_path, cfg, info) -> str:
    """A resumed run keeps writing into its own folder; a fresh one gets a new numbered folder."""
    if resume_path and os.path.basename(os.path.dirname(resume_path)) == "checkpoints":
        return os.path.dirname(os.path.dirname(resume_path))
    return new_run_dir(cfg, info)


@contextlib.contextmanager
def removed_if_refused(run_dir: str, is_main: bool):
    """Remove a new run folder (it holds only the log) if a user error, e.g. a resume checkpoint that does
    not fit, ends the run before its first checkpoint: no empty numbered folder is left behind."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    fresh = is_main and not os.listdir(checkpoints)
    try:
        yield
    except UserError:
        if fresh and not os.listdir(checkpoints):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def main(cfg: TrainConfig) -> None:
    from dataset.build import build_dataset

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        use_deterministic_kernels()
    info = init_distributed(cfg.device, always_group=cfg.data_parallel == "fsdp")
    if info.device.type == "cuda":
        enable_tf32()
    check_file("--init-from", cfg.init_from)
    dataset = build_dataset(cfg.dataset, cfg.code_path, seed=cfg.global_seed, vocab_size=cfg.vocab_size,
                            num_classes=cfg.num_classes, condition_path=cfg.condition_path)
    check_data_fits(cfg, info.world_size, dataset)
    with output_folder(cfg.results_dir):  # made here and left empty by a refused run: removed again
        check_shared_folder(cfg.results_dir)  # every node must find (and write) the same checkpoints
        resume_path = find_resume_checkpoint(cfg)
        if resume_path and not os.path.exists(resume_path):
            raise InputNotFound(f"--resume / --gpt-ckpt {resume_path}: not found; check the path")
        run_dir = run_dir_for(resume_path, cfg, info)
        with removed_if_refused(run_dir, info.is_main):
            trainer = train(cfg, info, dataset, run_dir, resume_path)
    if trainer.stopped_by:
        ignore_stop_signals(cfg.stop_signal)
    cleanup()
    if trainer.stopped_by:  # a checkpoint was written: schedulers and scripts may requeue on the exit code
        sys.exit(STOPPED_EXIT_CODE)


def cli(argv=None) -> None:
    main(config_from_args(get_args_parser().parse_args(argv)))


if __name__ == "__main__":
    run_main(cli)

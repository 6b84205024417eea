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

import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.train.config import TrainConfig
from autoregressive.train.loop import find_resume_checkpoint, new_run_dir, train
from autoregressive.train.kernels import KERNEL_SETS
from autoregressive.train.precision import PRECISION_POLICIES
from autoregressive.utils.cli import InputNotFound, UserError, check_file, run_main
from autoregressive.utils.device import enable_tf32, use_deterministic_kernels
from autoregressive.utils.dist import check_shared_folder, cleanup, init_distributed
from autoregressive.utils.files import output_folder

DEFAULTS = TrainConfig(code_path="")


def get_args_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(description="Train ARPG (class-conditional) on VQ codes.")
    parser.add_argument("--gpt-model", choices=list(ARPG_models), default=d.gpt_model)
    parser.add_argument("--code-path", required=True, help="folder of code files (see --dataset)")
    parser.add_argument("--dataset", choices=["imagenet_code", "llamagen_code", "digits"], default=d.dataset,
                        help="imagenet_code: RandAR layout {class}/{i}.npy; llamagen_code: *_codes/ + *_labels/; "
                             "digits: the embedded demo set (python -m dataset.digits)")
    parser.add_argument("--condition-path", default=None,
                        help="controllable generation: condition maps beside the codes (python -m dataset.digits "
                             "writes {split}_shape/, extract_conditions_c2i.py edge maps); sizes the condition table")
    parser.add_argument("--condition-dropout-p", type=float, default=d.condition_dropout_prob,
                        help="condition map dropped to 'no condition' for guidance (also with every dropped class)")
    parser.add_argument("--init-from", default=None,
                        help="start from these weights with a fresh optimizer (fine-tuning); a class-only checkpoint "
                             "for a --condition-path run loads strictly plus fresh condition parameters")
    parser.add_argument("--results-dir", default=d.results_dir)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after this many optimizer steps")
    parser.add_argument("--global-batch-size", type=int, default=d.global_batch_size)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=d.gradient_accumulation_steps)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--min-lr", type=float, default=d.min_lr)
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    parser.add_argument("--lr-schedule", choices=["cosine", "constant"], default=d.lr_schedule)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--beta1", type=float, default=d.betas[0])
    parser.add_argument("--beta2", type=float, default=d.betas[1])
    parser.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0 disables clipping")
    parser.add_argument("--ema", action="store_true", help="keep an EMA of the weights (decay 0.9999)")
    parser.add_argument("--dropout-p", type=float, default=d.dropout_p, help="residual and FFN dropout")
    parser.add_argument("--token-dropout-p", type=float, default=d.token_dropout_p, help="input token dropout")
    parser.add_argument("--drop-path-rate", type=float, default=d.drop_path_rate,
                        help="stochastic depth, rising linearly over the layers to this rate; > 0 turns "
                             "--dropout-p off")
    parser.add_argument("--no-compile", action="store_true", help="do not torch.compile the model (CUDA only)")
    parser.add_argument("--grad-checkpointing", nargs="?", const="all", default=d.grad_checkpointing,
                        metavar="LAYERS", help="recompute layers in the backward pass (less activation memory): "
                        "bare or 'all', 'self', 'cross' (one layer kind), or a number n (the first n layers)")
    parser.add_argument("--activation-memory-budget", type=float, default=d.activation_memory_budget,
                        metavar="FRACTION", help="compiled step on CUDA: below 1, recompute cheap ops in the backward "
                        "pass to keep less activation memory (ARPG-L batch 128: 0.75 = 26.8 GiB, 6%% slower)")
    parser.add_argument("--data-parallel", choices=["ddp", "fsdp"], default=d.data_parallel,
                        help="ddp: every GPU holds the model; fsdp: parameters, gradients and optimizer state "
                             "sharded over GPUs (FSDP2), checkpoints sharded (python -m scripts.convert_checkpoint)")
    parser.add_argument("--chunked-loss", action=argparse.BooleanOptionalAction, default=d.chunked_loss,
                        help="cross-entropy chunk by chunk without keeping the float32 logits: the same loss and "
                             "speed, 4 GiB less for ARPG-L at batch 128 (on by default)")
    parser.add_argument("--mixed-precision", choices=["none", "fp16", "bf16"], default=d.mixed_precision)
    parser.add_argument("--precision-policy", choices=list(PRECISION_POLICIES), default=d.precision_policy,
                        help="exact: the released numerics (float32 weights and residual stream, bf16 autocast); "
                             "opt-in bf16: bf16 compute weights over float32 master weights (DDP or FSDP; with "
                             "--grad-checkpointing, FSDP only); fp8 / fp8-rowwise: torchao float8 matmuls, scaled per tensor / per row (CUDA sm89+). Checkpoints hold float32 weights")
    parser.add_argument("--kernels", choices=list(KERNEL_SETS), default=d.kernels,
                        help="opt-in Liger-Kernel kernels (CUDA, pip install liger-kernel): liger-ce: fused head and "
                             "cross-entropy; liger: also RMSNorm and SwiGLU (docs/numerics.md)")
    parser.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--num-workers", type=int, default=d.num_workers)
    parser.add_argument("--global-seed", type=int, default=d.global_seed)
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels: two runs (or a run and its resume) from one seed give the same "
                             "losses to the bit on the same GPUs and build, at some speed cost")
    parser.add_argument("--vocab-size", type=int, default=d.vocab_size)
    parser.add_argument("--num-classes", type=int, default=d.num_classes)
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--downsample-size", type=int, default=d.downsample_size)
    parser.add_argument("--cls-token-num", type=int, default=d.cls_token_num)
    parser.add_argument("--gpt-ckpt", default=None, help="resume from this checkpoint (the official flag)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume: bare = latest checkpoint of the newest run of --gpt-model in --results-dir "
                             "(a new run if there is none); or a checkpoint file or run folder")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (off by default)")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (matters on small CPUs)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(
        code_path=args.code_path, gpt_model=args.gpt_model, dataset=args.dataset, results_dir=args.results_dir,
        epochs=args.epochs, max_steps=args.max_steps, global_batch_size=args.global_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, lr=args.lr, min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs, lr_schedule=args.lr_schedule, weight_decay=args.weight_decay,
        betas=[args.beta1, args.beta2], max_grad_norm=args.max_grad_norm, ema=args.ema, dropout_p=args.dropout_p,
        token_dropout_p=args.token_dropout_p, compile=not args.no_compile, mixed_precision=args.mixed_precision,
        precision_policy=args.precision_policy, kernels=args.kernels,
        grad_checkpointing=args.grad_checkpointing, activation_memory_budget=args.activation_memory_budget,
        data_parallel=args.data_parallel, chunked_loss=args.chunked_loss,
        drop_path_rate=args.drop_path_rate,
        ckpt_every=args.ckpt_every, log_every=args.log_every, num_workers=args.num_workers,
        global_seed=args.global_seed, deterministic=args.deterministic, vocab_size=args.vocab_size, num_classes=args.num_classes,
        image_size=args.image_size, downsample_size=args.downsample_size, cls_token_num=args.cls_token_num,
        resume=args.gpt_ckpt or args.resume, wandb=args.wandb, num_threads=args.num_threads, device=args.device,
        condition_path=args.condition_path, condition_dropout_prob=args.condition_dropout_p, init_from=args.init_from)
    return apply_condition_vocabulary(apply_dataset_shape(cfg))


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


def check_data_fits(cfg: TrainConfig, world_size: int, dataset) -> None:
    """What the trainer would refuse, refused before a run folder exists."""
    if dataset.num_tokens != cfg.block_size:
        raise UserError(f"the codes in {cfg.code_path} have {dataset.num_tokens} tokens per image, but --image-size "
                        f"{cfg.image_size} / --downsample-size {cfg.downsample_size} gives {cfg.block_size}; "
                        "pass the sizes the codes were extracted with")
    per_step = world_size * cfg.gradient_accumulation_steps
    if cfg.global_batch_size % per_step:
        raise UserError(f"--global-batch-size {cfg.global_batch_size} must divide by world size {world_size} x "
                        f"--gradient-accumulation-steps {cfg.gradient_accumulation_steps}")
    if len(dataset) < cfg.global_batch_size:
        raise UserError(f"the dataset ({len(dataset)} samples in {cfg.code_path}) is smaller than one global batch "
                        f"({cfg.global_batch_size}); lower --global-batch-size")


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
    # Per-rank seed; a resumed run overwrites it with the saved RNG states.
    torch.manual_seed(cfg.global_seed * info.world_size + info.rank)
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
            train(cfg, info, dataset, run_dir, resume_path)
    cleanup()


def cli(argv=None) -> None:
    main(config_from_args(get_args_parser().parse_args(argv)))


if __name__ == "__main__":
    run_main(cli)

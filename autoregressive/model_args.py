"""The model flags of every sampling script, declared once: which network (--gpt-model, --gpt-ckpt,
--weights, --precision), which tokenizer (--vq-model, --vq-ckpt) and the size overrides. Add them with
add_model_args; model_from_args builds the network and the tokenizer they name."""
import argparse
from typing import Optional, Tuple

import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.pretrained import with_checkpoints_fetched
from autoregressive.utils.cli import UserError, check_at_least, check_file
from autoregressive.weights import PRECISIONS, add_weights_arg, load_gpt, load_vq

# Override flag -> ARPGConfig field; given, the flag replaces the model size's value.
SIZE_FLAGS = {"--cls-token-num": "cls_token_num", "--codebook-size": "vocab_size", "--num-classes": "num_classes"}


def add_model_args(parser: argparse.ArgumentParser, *, gpt_model: str = "ARPG-L", precision: str = "none",
                   vq: bool = True, sizes: bool = True) -> argparse.ArgumentParser:
    """Add --gpt-model, --gpt-ckpt, --weights and --precision; with `vq`, --vq-model and --vq-ckpt; with
    `sizes`, the overrides --cls-token-num, --codebook-size, --num-classes, --image-size and
    --downsample-size. gpt_model and precision: this script's defaults (the official DDP sampler's
    weights default to bf16)."""
    from tokenizer.vq_model import VQ_models

    group = parser.add_argument_group("model")
    group.add_argument("--gpt-model", choices=list(ARPG_models), default=gpt_model)
    group.add_argument("--gpt-ckpt", default=None,
                       help="a file, hf://owner/repo/file[@revision], or omitted: the released weights of "
                            "--gpt-model from the Hugging Face Hub")
    add_weights_arg(group)
    group.add_argument("--precision", choices=list(PRECISIONS), default=precision,
                       help="the weights' dtype: none = float32, bf16 or fp16")
    if vq:
        group.add_argument("--vq-model", choices=list(VQ_models), default="VQ-16")
        group.add_argument("--vq-ckpt", default=None,
                           help="VQ tokenizer checkpoint (a file or hf://...); omitted: the released VQ-16 for "
                                "ARPG-L/XL/XXL, none for the digits model")
    if sizes:
        group.add_argument("--cls-token-num", type=int, default=None, help="default: the model size's (1)")
        group.add_argument("--codebook-size", type=int, default=None, help="default: the model size's (16384)")
        group.add_argument("--num-classes", type=int, default=None, help="default: the model size's (1000)")
        group.add_argument("--image-size", type=int, default=None,
                           help="default: the model size's grid x --downsample-size")
        group.add_argument("--downsample-size", type=int, default=16)
    return parser


def check_model_args(args: argparse.Namespace) -> None:
    """Refuse bad model flags before anything is built or downloaded."""
    check_file("--gpt-ckpt", args.gpt_ckpt)
    check_file("--vq-ckpt", getattr(args, "vq_ckpt", None))
    if not hasattr(args, "downsample_size"):
        return
    for flag in (*SIZE_FLAGS, "--image-size", "--downsample-size"):
        check_at_least(flag, getattr(args, flag[2:].replace("-", "_")), 1)
    if args.image_size and args.image_size % args.downsample_size:
        raise UserError(f"--image-size {args.image_size} is not a multiple of --downsample-size {args.downsample_size}")


def model_overrides(args: argparse.Namespace, condition_vocab_size: int = 0) -> dict:
    """ARPGConfig fields the flags change: the size overrides given, and the condition vocabulary."""
    overrides = {"condition_vocab_size": condition_vocab_size} if condition_vocab_size else {}
    if hasattr(args, "downsample_size"):
        overrides.update({field: getattr(args, flag[2:].replace("-", "_")) for flag, field in SIZE_FLAGS.items()
                          if getattr(args, flag[2:].replace("-", "_")) is not None})
        if args.image_size:
            overrides["block_size"] = (args.image_size // args.downsample_size) ** 2
    return overrides


def model_from_args(args: argparse.Namespace, device, *, condition_vocab_size: int = 0,
                    precision: Optional[str] = None, vq_dtype: torch.dtype = torch.float32,
                    compile_vq: bool = False) -> Tuple[torch.nn.Module, Optional[torch.nn.Module]]:
    """The network (eval mode, in --precision or `precision`) and the tokenizer (None without a VQ
    checkpoint) that add_model_args' flags name; hf:// paths and omitted checkpoints are fetched first."""
    args = with_checkpoints_fetched(args)
    model = load_gpt(args.gpt_model, args.gpt_ckpt, device, precision or args.precision, args.weights,
                     **model_overrides(args, condition_vocab_size))
    vq_ckpt = getattr(args, "vq_ckpt", None)
    vq = load_vq(args.vq_model, vq_ckpt, device, vq_dtype, compile_vq) if vq_ckpt else None
    return model, vq

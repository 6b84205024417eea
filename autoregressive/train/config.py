"""The training configuration: one typed place for every setting and its default."""
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.train.kernels import check_kernels
from autoregressive.train.precision import check_policy
from autoregressive.utils.cli import UserError, check_at_least


@dataclass
class TrainConfig:
    code_path: str
    gpt_model: str = "ARPG-L"
    dataset: str = "imagenet_code"
    results_dir: str = "results"
    epochs: int = 300
    max_steps: Optional[int] = None  # stop after this many optimizer steps (the schedule still follows epochs)
    global_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_epochs: float = 100
    lr_schedule: str = "cosine"
    weight_decay: float = 5e-2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    max_grad_norm: float = 1.0
    ema: bool = False
    ema_decay: float = 0.9999
    dropout_p: float = 0.1
    token_dropout_p: float = 0.1
    drop_path_rate: float = 0.0  # stochastic depth of the last layer (timm's DropPath); > 0 sets dropout_p to 0
    compile: bool = True
    # Compiled step: below 1, compile's partitioner recomputes cheap ops in the backward pass instead of
    # keeping their outputs (ARPG-L batch 128 on an H100: 0.75 gave 26.8 GiB at 779 img/s, vs 34.8 / 830).
    activation_memory_budget: float = 1.0
    grad_checkpointing: str = "none"  # layers recomputed in the backward pass: none, all, self, cross or a number
    data_parallel: str = "ddp"  # 'ddp' (replicated) or 'fsdp' (sharded parameters, gradients, optimizer state)
    chunked_loss: bool = True  # cross-entropy chunk by chunk, never keeping the (B, N, V) float32 logits
    mixed_precision: str = "bf16"  # on CUDA: autocast dtype ('none', 'bf16', 'fp16')
    precision_policy: str = "exact"  # 'exact', or opt-in 'bf16' / 'fp8' (see autoregressive/train/precision.py)
    kernels: str = "none"  # 'none', or opt-in Liger kernels 'liger-ce' / 'liger' (see autoregressive/train/kernels.py)
    ckpt_every: int = 5000
    log_every: int = 100
    num_workers: int = 24
    global_seed: int = 0
    deterministic: bool = False  # deterministic kernels: bitwise-repeatable GPU runs (and resumes), slower
    vocab_size: int = 16384
    num_classes: int = 1000
    image_size: int = 256
    downsample_size: int = 16
    cls_token_num: int = 1
    # Controllable generation: condition maps beside the codes (dataset/conditions.py); the vocabulary
    # size comes from the folder's condition.json (0 = a class-only model).
    condition_path: Optional[str] = None
    condition_vocab_size: int = 0
    condition_dropout_prob: float = 0.1
    init_from: Optional[str] = None  # start from these weights (fine-tuning; see train/finetune.py)
    resume: Optional[str] = None  # 'latest', a checkpoint file or a run folder
    wandb: bool = False
    num_threads: Optional[int] = None
    device: str = "auto"

    def __post_init__(self):
        if self.data_parallel not in ("ddp", "fsdp"):
            raise UserError(f"--data-parallel must be ddp or fsdp, got {self.data_parallel!r}")
        check_policy(self.precision_policy, self.data_parallel, self.grad_checkpointing)
        check_kernels(self.kernels)
        if not 0.0 <= self.activation_memory_budget <= 1.0:
            raise UserError(f"--activation-memory-budget must be in [0, 1], got {self.activation_memory_budget}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise UserError(f"--drop-path-rate must be in [0, 1), got {self.drop_path_rate}")
        if self.gradient_accumulation_steps < 1:
            raise UserError("--gradient-accumulation-steps must be >= 1")
        if not 0.0 <= self.condition_dropout_prob <= 1.0:
            raise UserError(f"--condition-dropout-p must be in [0, 1], got {self.condition_dropout_prob}")
        self.check_counts_and_rates()
        if self.image_size % self.downsample_size:
            raise UserError(f"--image-size {self.image_size} is not a multiple of --downsample-size {self.downsample_size}")

    def check_counts_and_rates(self) -> None:
        for flag, value, minimum in (("--epochs", self.epochs, 1), ("--max-steps", self.max_steps, 1),
                                     ("--global-batch-size", self.global_batch_size, 1), ("--lr", self.lr, 0),
                                     ("--min-lr", self.min_lr, 0), ("--warmup-epochs", self.warmup_epochs, 0),
                                     ("--weight-decay", self.weight_decay, 0), ("--max-grad-norm", self.max_grad_norm, 0),
                                     ("--ckpt-every", self.ckpt_every, 1), ("--log-every", self.log_every, 1),
                                     ("--num-workers", self.num_workers, 0), ("--vocab-size", self.vocab_size, 1),
                                     ("--num-classes", self.num_classes, 1), ("--image-size", self.image_size, 1),
                                     ("--downsample-size", self.downsample_size, 1),
                                     ("--cls-token-num", self.cls_token_num, 1), ("--num-threads", self.num_threads, 1)):
            check_at_least(flag, value, minimum)
        for flag, value in (("--dropout-p", self.dropout_p), ("--token-dropout-p", self.token_dropout_p),
                            ("--beta1", self.betas[0]), ("--beta2", self.betas[1])):
            if not 0 <= value < 1:
                raise UserError(f"{flag} must be in [0, 1), got {value}")
        if self.grad_checkpointing not in ("none", "all", "self", "cross") and not self.grad_checkpointing.isdigit():
            raise UserError(f"--grad-checkpointing must be all, self, cross or a number, got {self.grad_checkpointing!r}")

    @property
    def block_size(self) -> int:
        return (self.image_size // self.downsample_size) ** 2


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The ARPG model a run with this configuration trains, freshly initialised."""
    drop_path_layer, dropout_p = None, cfg.dropout_p
    if cfg.drop_path_rate > 0:  # as the official recipe: stochastic depth replaces residual and FFN dropout
        from timm.layers import DropPath

        drop_path_layer, dropout_p = DropPath, 0.0
    return ARPG_models[cfg.gpt_model](vocab_size=cfg.vocab_size, num_classes=cfg.num_classes, block_size=cfg.block_size,
                                      cls_token_num=cfg.cls_token_num, resid_dropout_p=dropout_p,
                                      ffn_dropout_p=dropout_p, token_dropout_p=cfg.token_dropout_p,
                                      grad_checkpointing=cfg.grad_checkpointing, drop_path_rate=cfg.drop_path_rate,
                                      drop_path_layer=drop_path_layer, condition_vocab_size=cfg.condition_vocab_size,
                                      condition_dropout_prob=cfg.condition_dropout_prob)

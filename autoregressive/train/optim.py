"""Optimizer and learning-rate schedule of the official recipe."""
import math

import torch


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings (ndim >= 2) only, not on norms' gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)


def learning_rate_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float,
                     schedule: str) -> float:
    """Linear warm-up over warmup_epochs, then 'cosine' decay to min_lr at `epochs` or 'constant';
    `epoch` is fractional (steps done / steps per epoch), as in the official trainer."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-8)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown --lr-schedule {schedule!r}; choose 'cosine' or 'constant'")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

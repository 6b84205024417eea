"""quack-kernels' SwiGLU MLP (github Dao-AILab/quack) for training, the opt-in `--mlp-kernel quack`: its
GEMMs apply the activation (and in the backward pass its derivative) in their epilogues, so the gate and
up projections' product never makes a round trip through memory on its own. quack is optional (it needs a
Hopper or Blackwell GPU and NVIDIA's CUTLASS DSL) and imported only when this path runs; the model's own
FeedForward is the definition it is checked against (scripts/check_precision.py).
"""
import importlib.util
import os
from typing import Optional

import torch

from autoregressive.utils.device import gpu_unavailable_reason

MIN_CAPABILITY = (9, 0)
INSTALL = "pip install quack-kernels 'nvidia-cutlass-dsl[cu13]' (or [cu12])"


def install_folder_problem(library_file: str) -> Optional[str]:
    """Why quack's kernel cache would refuse a CUTLASS DSL installed at library_file, or None. quack keys its
    compiled kernels by the functions they call and names installed libraries' functions instead of reading
    them; it knows them by a site-packages or dist-packages folder in their path, and stops with a TypeError
    at the DSL's own objects anywhere else (pip install --target into another folder name, say)."""
    parts = os.path.abspath(library_file).split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return None
    return (f"finds the CUTLASS DSL at {os.path.dirname(library_file)}, outside a site-packages folder, where "
            "quack's kernel cache cannot fingerprint it; install it with pip into an environment (or with "
            "--target into a folder named site-packages)")


def unavailable_reason(device: torch.device) -> Optional[str]:
    """Why quack's MLP cannot train on `device` here, or None when it can."""
    if importlib.util.find_spec("quack") is None or importlib.util.find_spec("cutlass") is None:
        return f"needs the optional quack-kernels package and its CUTLASS DSL ({INSTALL})"
    return (gpu_unavailable_reason(device, MIN_CAPABILITY, "Hopper, Blackwell")
            or install_folder_problem(importlib.util.find_spec("cutlass").origin))


def swiglu_mlp(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, tuned: bool = True) -> torch.Tensor:
    """w2 @ (silu(gate) * up) with [gate; up] = w13 @ x, as FeedForward computes it, in quack's two fused
    GEMMs (w13 holds the gate rows then the up rows: quack's concatenated layout). Under autocast quack casts
    its operands to the autocast dtype, as nn.Linear does. tuned: each new shape's GEMM configuration is chosen
    by timing at its first call (the faster kernels; scripts/bench_quack.py measures both)."""
    from quack.mlp import mlp_func

    return mlp_func(x, w13, w2, activation="swiglu", concat_layout=True, tuned=tuned)

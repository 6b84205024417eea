"""--kernels: which of Liger-Kernel's training kernels the trained model's blocks call. The choice is a
field of the model's configuration (ARPGConfig.kernels, set by build_model); the kernels, and what each
set changes, are in autoregressive/kernels/liger.py. Parameter names, checkpoints, evaluation and the
sampling paths are the same under every set."""
import importlib.util
from typing import List, Optional

import torch

from autoregressive.kernels.liger import KERNEL_SETS
from autoregressive.utils.cli import UserError


def check_kernels(kernels: str) -> None:
    if kernels not in KERNEL_SETS:
        raise UserError(f"--kernels must be one of {', '.join(KERNEL_SETS)}, got {kernels!r}")


def parse_kernel_list(text: str) -> List[str]:
    """'none,liger' -> ['none', 'liger'] (none first, each once), refused with the known names."""
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in KERNEL_SETS]
    if unknown:
        raise UserError(f"unknown --kernels {', '.join(unknown)}; choose from {', '.join(KERNEL_SETS)}")
    return ["none"] + [name for name in dict.fromkeys(names) if name != "none"]


def kernels_unavailable_reason(kernels: str, device: torch.device) -> Optional[str]:
    """Why `kernels` cannot run on `device` here, or None when it can."""
    if kernels == "none":
        return None
    if importlib.util.find_spec("liger_kernel") is None:
        return "needs the optional liger-kernel package (pip install liger-kernel)"
    if device.type != "cuda":
        return f"needs a CUDA GPU (this run is on {device.type})"
    return None


def check_kernels_available(kernels: str, device: torch.device) -> None:
    """One clear line before any model is built when the kernel set cannot run here."""
    check_kernels(kernels)
    reason = kernels_unavailable_reason(kernels, device)
    if reason is not None:
        raise UserError(f"--kernels {kernels} {reason}; leave --kernels at none")

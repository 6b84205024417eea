"""Device choice, the matmul precision of the entry scripts, and repeatable kernels."""
from typing import Optional, Tuple

import torch

from autoregressive.utils.cli import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cuda' or 'cpu'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is visible; pass --device cpu or auto")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def enable_tf32() -> None:
    """TF32 for float32 matmuls and convolutions on CUDA, as the official scripts run."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def use_deterministic_kernels() -> None:
    """Kernels that give the same bits on every run of the same machine, build and process count (slower).
    By default cuBLAS, atomic-add scatters in the embedding backward and inductor's tuned reductions make
    two GPU runs from one seed drift apart within a few steps. Call before the first CUDA operation: cuBLAS
    reads its workspace setting when it makes its first handle."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Not warn_only: then SDPA's memory-efficient backward also runs its deterministic variant, and an op
    # without a deterministic kernel stops the run naming itself instead of drifting silently.
    torch.use_deterministic_algorithms(True)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)  # cuDNN's attention backward has no deterministic mode in torch
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    from torch._inductor import config as inductor_config

    for option, value in (repeatable_compile_options() or {}).items():  # every later compilation, not one
        setattr(inductor_config, option, value)


def repeatable_compile_options() -> Optional[dict]:
    """torch.compile options under which every process compiles a graph to the same numbers: outside
    Inductor's deterministic mode it picks some reductions' launch configurations by timing them at the
    first call, and each choice may sum in its own order, so two processes (or two runs with empty compile
    caches) could round differently (torch >= 2.10 fixes the reductions' configurations and tunes none).
    None on a torch without the mode (it compiles as before)."""
    from torch._inductor import config as inductor_config

    return {"deterministic": True} if hasattr(inductor_config, "deterministic") else None


def gpu_unavailable_reason(device: torch.device, min_capability: Tuple[int, int], gpus: str) -> Optional[str]:
    """Why a kernel for CUDA GPUs of min_capability or newer (`gpus` names them, as "Ada, Hopper") cannot
    run on `device`, or None when it can."""
    if device.type != "cuda":
        return f"needs a CUDA GPU (this run is on {device.type})"
    capability = torch.cuda.get_device_capability(device)
    if capability < min_capability:
        return (f"needs a GPU of compute capability {'.'.join(map(str, min_capability))} or newer ({gpus}); "
                f"this one is {capability[0]}.{capability[1]}")
    return None

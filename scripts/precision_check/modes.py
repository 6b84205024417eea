"""The sampling modes the check compares: how a trained float32 model is run (weights dtype, autocast, TF32,
KV-cache kind, compiled layers), and the yardstick each is judged against."""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from autoregressive.kernels.codes import KV_CODES
from autoregressive.utils.cli import renamed_note

REFERENCE_MODE, YARDSTICK_MODE = "float32", "bf16-autocast"


@dataclass(frozen=True)
class SamplingMode:
    """How a trained float32 model is run for sampling: `prepare` turns (a copy of) it into the model
    that runs (weights cast, or quantised: an FP8 mode is one more entry), under autocast to `autocast`,
    with TF32 float32 matmuls on CUDA or not, with a KV cache of kind `kv_cache` (SamplingConfig's).
    yardstick: the mode whose KL and top-1 disagreement it must stay within TOLERANCE x of."""
    prepare: Callable[[torch.nn.Module], torch.nn.Module]
    autocast: Optional[torch.dtype] = None
    tf32: bool = False
    kv_cache: str = "weights"
    compile_layers: bool = False  # the layers' cache-free parts compiled (the samplers' --compile-layers)
    yardstick: str = YARDSTICK_MODE


SAMPLING_MODES: Dict[str, SamplingMode] = {
    "float32": SamplingMode(lambda model: model.float()),  # the reference
    "bf16-autocast": SamplingMode(lambda model: model.float(), torch.bfloat16),  # the exact recipe's training numerics
    "tf32": SamplingMode(lambda model: model.float(), tf32=True),  # sample_c2i.py's default (--precision none)
    "bf16": SamplingMode(lambda model: model.to(torch.bfloat16)),  # sample_c2i.py --precision bf16
    "fp16": SamplingMode(lambda model: model.to(torch.float16)),  # sample_c2i.py --precision fp16
    # --precision bf16 --kv-cache <each code dtype>; judged against bf16, so the figures show what the cache adds
    **{f"{kind}-kv": SamplingMode(lambda model: model.to(torch.bfloat16), kv_cache=kind, yardstick="bf16")
       for kind in KV_CODES},
    # --precision bf16 --compile-layers: compiled kernels keep float32 where eager ops round; judged against
    # bf16, the same weights in eager layers
    "bf16-compiled-layers": SamplingMode(lambda model: model.to(torch.bfloat16), compile_layers=True, yardstick="bf16"),
}


@contextlib.contextmanager
def matmul_tf32(enabled: bool):
    """TF32 for float32 matmuls on CUDA (a process-wide switch) inside, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def mode_context(mode: SamplingMode, device: torch.device):
    with matmul_tf32(mode.tf32), torch.autocast(device.type, dtype=mode.autocast or torch.bfloat16,
                                                  enabled=mode.autocast is not None):
        yield


RENAMED_MODES = {"bf16-fused": "bf16-compiled-layers"}  # old --sampling-modes names, still accepted


def renamed_mode(name: str) -> str:
    if name in RENAMED_MODES:
        renamed_note(f"sampling mode {name}", RENAMED_MODES[name])
    return RENAMED_MODES.get(name, name)


def parse_modes(text: str) -> List[str]:
    """--sampling-modes: float32 and bf16-autocast first (the reference and the yardstick), each mode's
    yardstick before it, each once; "none": no sampling comparison (training only, to fit a time limit)."""
    if text == "none":
        return []
    modes = [renamed_mode(mode) for mode in text.split(",") if mode]
    unknown = [mode for mode in modes if mode not in SAMPLING_MODES]
    if unknown:
        raise ValueError(f"unknown sampling mode {', '.join(unknown)}; choose from {', '.join(SAMPLING_MODES)}")
    with_yardsticks = [name for mode in modes for name in (SAMPLING_MODES[mode].yardstick, mode)]
    return list(dict.fromkeys([REFERENCE_MODE, YARDSTICK_MODE, *with_yardsticks]))

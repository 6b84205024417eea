"""Training kernels from Liger-Kernel (opt-in, CUDA, the optional `liger-kernel` package): --kernels.

none      the model's own PyTorch code, compiled by torch.compile (the default).
liger-ce  the output head and its loss as Liger's fused linear cross-entropy: chunk by chunk, the bf16
          logits are made, turned into their own gradient in place (softmax minus one-hot, in float32
          registers) and multiplied into the input and weight gradients at once, so the backward pass
          neither keeps nor recomputes them (our chunked loss recomputes each chunk's logits there).
          The head's matmuls stay bf16 as under autocast; the weight gradient is summed over chunks in
          float32. It runs outside the compiled graph (it syncs on the host once per step).
liger     liger-ce, plus Liger's RMSNorm (float32 statistics, rounded to the input's dtype before the
          weight, as RMSNorm does) and SwiGLU (silu(gate) * up) kernels in every layer.

Each changes the arithmetic order, not the formulas: losses agree with none's to the rounding of bf16
(tests/test_train_kernels.py's GPU test; scripts/check_precision.py --kernels judges training quality).
Parameter names, checkpoints and the sampling paths are untouched: only the modules' forward calls
are swapped, on the trained model itself, before it is compiled and wrapped.
"""
import importlib.util
import types
from typing import Optional

import torch
import torch.nn as nn

from autoregressive.models.arpg import ARPG, FeedForward, RMSNorm
from autoregressive.utils.cli import UserError

KERNEL_SETS = ("none", "liger-ce", "liger")


def check_kernels(kernels: str) -> None:
    if kernels not in KERNEL_SETS:
        raise UserError(f"--kernels must be one of {', '.join(KERNEL_SETS)}, got {kernels!r}")


def parse_kernel_list(text: str):
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


def apply_kernels(model: nn.Module, kernels: str, device: torch.device) -> nn.Module:
    """Swap the forward of the model's head loss (and, for `liger`, of every RMSNorm and FeedForward)
    for Liger's kernels, in place; `none` leaves the model alone. Returns `model`."""
    check_kernels(kernels)
    if kernels == "none":
        return model
    reason = kernels_unavailable_reason(kernels, device)
    if reason is not None:
        raise UserError(f"--kernels {kernels} {reason}; leave --kernels at none")
    for module in model.modules():
        if isinstance(module, ARPG):
            module.head_loss = types.MethodType(liger_head_loss, module)
        elif kernels == "liger" and isinstance(module, RMSNorm):
            module.forward = types.MethodType(liger_rms_norm, module)
        elif kernels == "liger" and isinstance(module, FeedForward):
            module.forward = types.MethodType(liger_feed_forward, module)
    return model


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of `tensor` runs in: autocast's where it is on, else the tensor's own."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(tensor.device.type), torch.get_autocast_dtype(tensor.device.type)
    else:
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if enabled else tensor.dtype


@torch.compiler.disable  # host sync inside (the count of targets) and Python loops over chunks
def liger_head_loss(self: ARPG, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of head(features) (M, D) against targets (M,) by Liger's fused kernel."""
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    dtype = compute_dtype(features)
    with torch.autocast("cuda", enabled=False):  # the casts below are autocast's, made explicit
        outputs = LigerFusedLinearCrossEntropyFunction.apply(
            features.to(dtype), self.head.weight.to(dtype), targets,
            None, None, -100, 0.0, 0.0, "mean", None, False, torch.float32)  # accum_dtype: float32
    return outputs[0] if isinstance(outputs, tuple) else outputs


def liger_rms_norm(self: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    # "llama" casting: statistics in float32, the normalised x rounded to x's dtype, then times the weight
    return LigerRMSNormFunction.apply(x, self.weight.to(x.dtype), self.eps, 0.0, "llama", False)


def liger_feed_forward(self: FeedForward, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    gate, up = self.w13(x).chunk(2, dim=-1)
    return self.w2(LigerSiLUMulFunction.apply(gate, up))

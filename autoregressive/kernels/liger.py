"""Liger-Kernel's training kernels (the optional `liger-kernel` package, Triton on CUDA), called by the
model's blocks when ARPGConfig.kernels names them (train_c2i.py --kernels):

none      the model's own PyTorch code, compiled by torch.compile (the default).
liger-ce  the output head and its loss as Liger's fused linear cross-entropy: chunk by chunk, the bf16
          logits are made, turned into their own gradient in place (softmax minus one-hot, in float32
          registers) and multiplied into the input and weight gradients at once, so the backward pass
          neither keeps nor recomputes them (our chunked loss recomputes each chunk's logits there).
          The head's matmuls stay bf16 as under autocast; the weight gradient is summed over chunks in
          float32. It runs outside the compiled graph (it syncs on the host once per step).
liger     liger-ce, plus Liger's RMSNorm (float32 statistics, rounded to the input's dtype before the
          weight, as RMSNorm does) and SwiGLU (silu(gate) * up) in every layer, in training mode only:
          evaluation and sampling run the model's own code whatever the setting.

Each changes the arithmetic order, not the formulas: losses agree with none's to the rounding of bf16
(tests/test_train_kernels.py's GPU test; scripts/check_precision.py --kernels judges training quality).
The package is imported on first use only.
"""
import torch

KERNEL_SETS = ("none", "liger-ce", "liger")


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of `tensor` runs in: autocast's where it is on, else the tensor's own."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(tensor.device.type), torch.get_autocast_dtype(tensor.device.type)
    else:
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if enabled else tensor.dtype


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of features (M, D) @ weight (V, D).T against targets (M,), logits never kept.
    Call it outside torch.compile's graph (a host sync inside, the count of targets, and Python loops over
    chunks): the model wraps it in torch.compiler.disable when built with these kernels, not at import,
    which would load the compiler with every import of the model."""
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    dtype = compute_dtype(features)
    with torch.autocast(features.device.type, enabled=False):  # the casts below are autocast's, made explicit
        outputs = LigerFusedLinearCrossEntropyFunction.apply(
            features.to(dtype), weight.to(dtype), targets,
            None, None, -100, 0.0, 0.0, "mean", None, False, torch.float32)  # accum_dtype: float32
    return outputs[0] if isinstance(outputs, tuple) else outputs


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    # "llama" casting: statistics in float32, the normalised x rounded to x's dtype, then times the weight
    return LigerRMSNormFunction.apply(x, weight.to(x.dtype), eps, 0.0, "llama", False)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    return LigerSiLUMulFunction.apply(gate, up)

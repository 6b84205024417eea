"""Quantise new keys or values into a quantised (FP8 or int8) KV cache, as one Triton kernel (CUDA only).

The eager form (autoregressive/models/kv_cache.py's quantise, then two slice copies) is about ten
small kernels per tensor; a decoding step writes a key and a value tensor into every layer set, so an
FP8 cache adds some 500 launches a step to ARPG-L, enough to make decoding slower than with the bf16
cache it halves. This kernel reads each new vector once and writes its codes and
float32 scale straight into the cache, with the eager form's arithmetic: scale = amax times
float32(1 / code max), codes = x / max(scale, tiny) clamped to +-code max, rounded to nearest even (the
division correctly rounded, as torch's between tensors), so the cache holds the same bits either way
(tests/test_cache_write.py compares them bitwise, on a GPU and in Triton's interpreter). e4m3: on a GPU the cast is the
hardware's (cvt.rn.satfinite, to nearest even as torch); only the interpreter, whose cast rounds wrongly,
first rounds on e4m3's grid with float arithmetic. int8: the quotient is rounded to an integer first
(the cast to int8 truncates).
"""
import os

import torch

from autoregressive.kernels.codes import CODE_DTYPES, code_dtype
from autoregressive.kernels.decode_attention import has_fp8

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch builds
    triton = None

FLOAT32_TINY = torch.finfo(torch.float32).tiny  # the eager form's floor under a scale (all-zero vectors)
# The code standing for a vector's largest |entry| (codes.CodeDtype.code_max), by dtype
CODE_MAX_BY_DTYPE = {dtype: code.code_max for dtype, code in CODE_DTYPES.items()}


def inverse_code_max(dtype: torch.dtype) -> float:
    """float32(1 / code max) as a Python float (exact in float32): the factor from a vector's amax to its scale."""
    return torch.tensor(1 / CODE_MAX_BY_DTYPE[dtype], dtype=torch.float32).item()


def supports(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether quantise_into handles these tensors (else the caller quantises eagerly)."""
    return (triton is not None and x.is_cuda and codes.dtype in CODE_MAX_BY_DTYPE
            and (not code_dtype(codes.dtype).needs_sm89 or has_fp8(x.device))
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and x.shape[-1] in (16, 32, 64, 128)
            and x.stride(-1) == 1 and codes.stride(-1) == 1 and scales.stride(-1) == 1)


if triton is not None:
    @triton.jit
    def _quantise_kernel(X, CODES, SCALES, num_heads, num_vectors, total, tiny, inv_code_max,
                         x_sb, x_sh, x_sn, c_sb, c_sh, c_sn, s_sb, s_sh,
                         BLOCK_V: tl.constexpr, HEAD_DIM: tl.constexpr, CODE_MAX: tl.constexpr,
                         INTEGER: tl.constexpr, ROUND_ON_GRID: tl.constexpr):
        # One program quantises BLOCK_V vectors of the flattened (B, H, n) index: a decoding step writes
        # only a few positions per (row, head), and a program per (row, head) left the GPU mostly idle on
        # ten thousand tiny programs (scripts/bench_cache_kernels.py times the write).
        vector = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
        ok = vector < total
        n = vector % num_vectors
        row_head = vector // num_vectors
        b = row_head // num_heads
        h = row_head % num_heads
        cols = tl.arange(0, HEAD_DIM)
        x = tl.load(X + (b * x_sb + h * x_sh + n * x_sn)[:, None] + cols[None, :], mask=ok[:, None], other=0.0)
        x = x.to(tl.float32)
        scale = tl.max(tl.abs(x), 1) * inv_code_max
        divisor = tl.maximum(scale, tiny)
        quotient = tl.math.div_rn(x, tl.broadcast_to(divisor[:, None], [BLOCK_V, HEAD_DIM]))
        quotient = tl.minimum(tl.maximum(quotient, -CODE_MAX), CODE_MAX)
        if INTEGER:
            # |quotient| <= 127: adding and subtracting 1.5 * 2^23 rounds it to an integer, ties to even
            # (torch.round's rule); the cast to int8 below then only truncates an integer.
            quotient = quotient + 12582912.0 - 12582912.0
        elif ROUND_ON_GRID:
            # Round to e4m3's grid here, to nearest even, so that the cast below is exact: Triton's interpreter
            # (the CPU tests) rounds wrongly where rounding up crosses a power of two (7.86 -> 4, not 8). A GPU
            # casts with cvt.rn.satfinite, to nearest even as torch does, and skips this.
            bits = quotient.to(tl.int32, bitcast=True)
            exponent = ((bits >> 23) & 0xFF) - 127
            step_exponent = tl.maximum(exponent, -6) - 3  # 3 mantissa bits; e4m3's subnormals are 2^-9 apart
            step = ((step_exponent + 127) << 23).to(tl.float32, bitcast=True)
            # |quotient| / step < 16: adding and subtracting 1.5 * 2^23 rounds it to an integer, ties to even
            magnitude = (tl.math.div_rn(tl.abs(quotient), step) + 12582912.0 - 12582912.0) * step
            quotient = tl.where(bits < 0, -magnitude, magnitude)  # the sign bit, so -0.0 stays -0.0
        tl.store(CODES + (b * c_sb + h * c_sh + n * c_sn)[:, None] + cols[None, :],
                 quotient.to(CODES.dtype.element_ty), mask=ok[:, None])
        tl.store(SCALES + b * s_sb + h * s_sh + n, scale, mask=ok)


def quantise_into(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, block_v: int = 64,
                  num_warps: int = 4) -> None:
    """Write x (B, H, n, d) as float8_e4m3fn or int8 codes into `codes` (B, H, n, d) and its per-vector
    float32 scales into `scales` (B, H, n): views into a cache, any strides with the last dim contiguous."""
    batch, heads, num_vectors, head_dim = x.shape
    total = batch * heads * num_vectors
    if total == 0:
        return
    _quantise_kernel[(triton.cdiv(total, block_v),)](
        x, codes, scales, heads, num_vectors, total, FLOAT32_TINY, inverse_code_max(codes.dtype),
        x.stride(0), x.stride(1), x.stride(2), codes.stride(0), codes.stride(1), codes.stride(2),
        scales.stride(0), scales.stride(1), BLOCK_V=block_v, HEAD_DIM=head_dim,
        CODE_MAX=CODE_MAX_BY_DTYPE[codes.dtype], INTEGER=code_dtype(codes.dtype).integer,
        ROUND_ON_GRID=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=num_warps)

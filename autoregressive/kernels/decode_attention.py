"""Attention of a few queries over a KV cache, as one Triton kernel (CUDA only).

While decoding, each row and head has a handful of queries (the step's targets, or its new tokens)
and reads a cache of up to a few hundred keys: the work is reading K and V once. SDPA's kernels tile
the queries by 64 or 128 rows and spend most of their time on that padding and on launch-time
bookkeeping; this kernel gives each (row, head) one program that streams its keys in blocks with an
online softmax in float32, and writes the output already in (B, n_q, H, d) order, so merging the
heads afterwards is a free view.

A quantised cache (float8_e4m3fn or int8 keys and values, one float32 scale per key and per value
vector) is read by the same kernel compiled with SCALED: the codes are widened to fp16 in registers
(fp16 holds every e4m3 and int8 value; bf16 would take several instructions per e4m3 pair), the
queries are scaled into fp16's range by a power of two per row, the key scales multiply the score
columns, and the value scales, relative to the program's largest (found in a first pass over the
scales), are folded into the probabilities before the p @ V product. Accumulation stays float32.
SCALED is a compile-time flag, so the unscaled kernel is the bf16 cache's. Reading half the bytes
does not halve the time at decoding shapes (a few hundred keys per program): each program waits on its
chain of dependent steps (load, widen, two small dots, the online softmax) more than on memory, so the
one-byte kernels can be slower than the bf16 one, more so with many queries a row. To time the three
kernels on the card at hand: `python -m scripts.bench_cache_kernels` (docs/speed.md has a table).

Triton ships with torch's CUDA builds; without it `available()` is False and callers use SDPA.
"""
import functools
import math
from typing import Optional

import torch

from autoregressive.kernels.codes import code_dtype

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch builds
    triton = None

MAX_QUERIES = 64  # beyond this many queries per row SDPA's tiling pays off


def available() -> bool:
    return triton is not None




@functools.lru_cache(maxsize=None)
def has_fp8(device: torch.device) -> bool:
    """Whether Triton converts float8_e4m3fn on this GPU (compute capability 8.9 and newer)."""
    return torch.cuda.get_device_capability(device) >= (8, 9)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaled: bool = False) -> bool:
    """Whether decode_attention handles these inputs (else use SDPA). scaled: k and v are the
    float8_e4m3fn or int8 codes of a quantised cache (their scales go to decode_attention too)."""
    head_dim = q.shape[-1]
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    code = code_dtype(k.dtype)  # the codes of a quantised cache widen exactly to fp16 in registers
    cache_ok = code is not None if scaled else k.dtype == q.dtype
    return (triton is not None and q.is_cuda and not needs_grad  # forward only
            and q.dtype in (torch.bfloat16, torch.float16) and cache_ok and v.dtype == k.dtype
            and q.shape[2] <= MAX_QUERIES and k.shape[2] > 0 and head_dim in (16, 32, 64, 128)
            and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
            and (code is None or not code.needs_sm89 or has_fp8(q.device)))


if triton is not None:
    @triton.jit
    def _widen(codes, WIDEN_BITS: tl.constexpr):
        """One-byte codes -> fp16, exactly. WIDEN_BITS (int8 only): without a conversion instruction, as
        c + 1152 has the fp16 bits 0x6400 + (c + 128) (1024 plus a mantissa below 1024), then one
        subtraction, which is shorter than the conversion instruction (scripts/bench_cache_kernels.py)."""
        if WIDEN_BITS:
            return ((codes.to(tl.int16) + 0x6480).to(tl.float16, bitcast=True) - 1152.0).to(tl.float16)
        return codes.to(tl.float16)

    @triton.jit
    def _decode_attention_kernel(Q, K, V, O, K_SCALE, V_SCALE, scale_log2, num_heads, num_queries, num_keys,
                                 q_sb, q_sh, q_sm, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, o_sb, o_sh, o_sm,
                                 ks_sb, ks_sh, vs_sb, vs_sh,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                                 SCALED: tl.constexpr, WIDEN_BITS: tl.constexpr):
        pid = tl.program_id(0)
        b = pid // num_heads
        h = pid % num_heads
        rows = tl.arange(0, BLOCK_M)
        cols = tl.arange(0, HEAD_DIM)
        keys = tl.arange(0, BLOCK_N)
        row_ok = rows < num_queries
        q = tl.load(Q + b * q_sb + h * q_sh + rows[:, None] * q_sm + cols[None, :], mask=row_ok[:, None], other=0.0)
        if SCALED:
            # fp16 operands: e4m3 pairs widen to fp16 in one instruction, and tl.dot on fp16 beats bf16
            # here (scripts/bench_cache_kernels.py). Each query row is scaled by a power of two into [-2, 2),
            # which moves only its exponent, so fp16 cannot overflow; scores get the power back.
            q32 = q.to(tl.float32)
            exponent = (tl.max(tl.abs(q32), 1).to(tl.int32, bitcast=True) >> 23) & 0xFF
            exponent = tl.minimum(tl.maximum(exponent, 1), 253)  # zero rows and float32's extremes stay finite
            q_down = ((254 - exponent) << 23).to(tl.float32, bitcast=True)  # 2^-(exponent - 127)
            q_up = (exponent << 23).to(tl.float32, bitcast=True)
            q = (q32 * q_down[:, None]).to(tl.float16)
            score_scale = q_up * scale_log2
            # Value scales enter the probabilities relative to the program's largest, so p * scale stays in
            # [0, 1] where fp16 keeps 11 bits. That largest is found first, in a pass over the scales (4 bytes
            # a key against 64 of codes): kept as a running maximum instead, the main loop would pay a
            # reduction across each block and a rescale of the accumulator, which cost more than this pass.
            v_maxes = tl.full([BLOCK_N], 1.1754943508222875e-38, tl.float32)  # float32's tiny: never 0
            for start in range(0, num_keys, BLOCK_N):
                n = start + keys
                scales = tl.load(V_SCALE + b * vs_sb + h * vs_sh + n, mask=n < num_keys, other=0.0)
                v_maxes = tl.maximum(v_maxes, scales)
            v_max = tl.max(v_maxes, 0)
            inv_v_max = 1.0 / v_max
        k_base = K + b * k_sb + h * k_sh
        v_base = V + b * v_sb + h * v_sh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start in range(0, num_keys, BLOCK_N):
            n = start + keys
            key_ok = n < num_keys
            k = tl.load(k_base + n[:, None] * k_sn + cols[None, :], mask=key_ok[:, None], other=0.0)
            v = tl.load(v_base + n[:, None] * v_sn + cols[None, :], mask=key_ok[:, None], other=0.0)
            if SCALED:  # e4m3 and int8 codes widen exactly to fp16
                s = tl.dot(q, tl.trans(_widen(k, WIDEN_BITS))) * score_scale[:, None]
                s = s * tl.load(K_SCALE + b * ks_sb + h * ks_sh + n, mask=key_ok, other=0.0)[None, :]
            else:
                s = tl.dot(q, tl.trans(k)) * scale_log2  # log2 domain: exp2 is the cheap exponential
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if SCALED:  # sum_j p_j (scale_j code_j) = v_max sum_j (p_j scale_j / v_max) code_j; l_i keeps plain p
                v_scale = tl.load(V_SCALE + b * vs_sb + h * vs_sh + n, mask=key_ok, other=0.0)
                p = p * (v_scale * inv_v_max)[None, :]
                acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), _widen(v, WIDEN_BITS))
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        if SCALED:
            out = out * v_max
        tl.store(O + b * o_sb + h * o_sh + rows[:, None] * o_sm + cols[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_scale: Optional[torch.Tensor] = None,
                     v_scale: Optional[torch.Tensor] = None, block_n: Optional[int] = None, num_warps: int = 4,
                     num_stages: Optional[int] = None, widen_by_bits: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q (B, H, n_q, d) and k, v (B, H, n_k, d), no mask. The query
    tile is n_q rounded up to a power of two, at least 16 (tl.dot's smallest).

    k_scale, v_scale: (B, H, n_k) float32 scales (last dim contiguous) of float8_e4m3fn or int8 k and v,
    which then stand for k * k_scale[..., None] and v * v_scale[..., None]; None for k and v in q's dtype.
    block_n, num_warps, num_stages: launch settings; by default the fastest found at ARPG's decoding
    shapes by scripts/bench_cache_kernels.py: 64-key blocks and 2 stages for a bf16 cache, 128 and 3 for
    an FP8 one with up to 16 queries a row (64 and 2 above, and for int8 codes).
    widen_by_bits: int8 codes widened to fp16 by bit moves and a subtraction instead of a conversion
    instruction: the same values, fewer instructions; False keeps the conversion (to compare them).
    Returns (B, H, n_q, d) in q's dtype, a transposed view of a (B, n_q, H, d) tensor. See `supports`.
    """
    batch, heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    out = torch.empty(batch, num_queries, heads, head_dim, dtype=q.dtype, device=q.device).transpose(1, 2)
    scale_log2 = 1.0 / math.sqrt(head_dim) * 1.4426950408889634  # log2(e)
    scaled = k_scale is not None
    block_m = max(16, triton.next_power_of_2(num_queries))
    # An FP8 cache with up to 16 queries a row streams 128-key blocks; with more (late steps of a decoding,
    # up to 28 targets) the 128 x block_m scores cost more than the longer blocks save, and int8 codes
    # gain nothing from them (scripts/bench_cache_kernels.py compares the block sizes).
    code = code_dtype(k.dtype) if scaled else None
    wide = code is not None and code.wide_blocks and block_m <= 16
    block_n = block_n or (128 if wide else 64)
    num_stages = num_stages or (3 if wide else 2)
    if scaled:
        assert k_scale.stride(-1) == 1 and v_scale.stride(-1) == 1, "scales must be contiguous along the keys"
    else:
        k_scale = v_scale = k  # never read: SCALED is off
    _decode_attention_kernel[(batch * heads,)](
        q, k, v, out, k_scale, v_scale, scale_log2, heads, num_queries, num_keys,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        k_scale.stride(0), k_scale.stride(1), v_scale.stride(0), v_scale.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim,
        SCALED=scaled, WIDEN_BITS=widen_by_bits and code is not None and code.widen_by_bits, num_warps=num_warps,
        num_stages=num_stages)
    return out

"""Attention of a few queries over a KV cache, as one Triton kernel (CUDA only).

While decoding, each row and head has a handful of queries (the step's targets, or its new tokens)
and reads a cache of up to a few hundred keys: the work is reading K and V once. SDPA's kernels tile
the queries by 64 or 128 rows and spend most of their time on that padding and on launch-time
bookkeeping; this kernel gives each (row, head) one program that streams its keys in blocks with an
online softmax in float32, and writes the output already in (B, n_q, H, d) order, so merging the
heads afterwards is a free view.

An FP8 cache (float8_e4m3fn keys and values, one float32 scale per key and per value vector) is read
by the same kernel compiled with SCALED: the codes are widened to fp16 in registers (fp16 holds every
e4m3 value; bf16 would take several instructions per pair), the queries are scaled into fp16's range by
a power of two per row, the key scales multiply the score columns, and the value scales, relative to
the largest so far, are folded into the probabilities before the p @ V product. Accumulation stays
float32. With PACKED (opt-in until timed on a GPU) the codes are loaded as int16 pairs and widened by
moving bits: loaded as e4m3, Triton converts their tiles' layout a byte at a time through shared
memory (st.shared.b8 in the sm_90 PTX). SCALED and PACKED are compile-time flags, so the unscaled kernel is
the bf16 cache's.

Triton ships with torch's CUDA builds; without it `available()` is False and callers use SDPA.
"""
import functools
import math
from typing import Optional

import torch

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
    float8_e4m3fn codes of an FP8 cache (their scales go to decode_attention too)."""
    head_dim = q.shape[-1]
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    cache_dtype = torch.float8_e4m3fn if scaled else q.dtype
    return (triton is not None and q.is_cuda and not needs_grad  # forward only
            and q.dtype in (torch.bfloat16, torch.float16) and k.dtype == cache_dtype and v.dtype == cache_dtype
            and q.shape[2] <= MAX_QUERIES and k.shape[2] > 0 and head_dim in (16, 32, 64, 128)
            and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
            and (not scaled or has_fp8(q.device)))


if triton is not None:
    @triton.jit
    def _widen_e4m3_pairs(words):
        """(n, d/2) int16 words, each two e4m3 codes (the lower byte first) -> (n, d) fp16 equal to the codes
        times 2^-8, by moving bits: e4m3's 4 exponent bits (bias 7) land in fp16's 5 (bias 15), subnormals
        included, so the factor is exact. Widening in registers from 16-bit words keeps Triton from
        converting the tile's layout a byte at a time through shared memory, as it does for an e4m3 tile."""
        w = words.to(tl.int32)
        low = ((w & 0x80) << 8) | ((w & 0x7F) << 7)
        high = (w & 0x8000) | ((w & 0x7F00) >> 1)
        both = tl.join(low.to(tl.int16), high.to(tl.int16))  # (n, d/2, 2): codes 2j and 2j + 1 side by side
        return tl.reshape(both, (w.shape[0], 2 * w.shape[1])).to(tl.float16, bitcast=True)

    @triton.jit
    def _decode_attention_kernel(Q, K, V, O, K_SCALE, V_SCALE, scale_log2, num_heads, num_queries, num_keys,
                                 q_sb, q_sh, q_sm, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, o_sb, o_sh, o_sm,
                                 ks_sb, ks_sh, vs_sb, vs_sh,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                                 SCALED: tl.constexpr, PACKED: tl.constexpr):
        pid = tl.program_id(0)
        b = pid // num_heads
        h = pid % num_heads
        rows = tl.arange(0, BLOCK_M)
        cols = tl.arange(0, HEAD_DIM)
        keys = tl.arange(0, BLOCK_N)
        row_ok = rows < num_queries
        q = tl.load(Q + b * q_sb + h * q_sh + rows[:, None] * q_sm + cols[None, :], mask=row_ok[:, None], other=0.0)
        if SCALED:
            # fp16 operands: the FP8 kernel took 144 us with them against 194 with bf16 ones (ARPG-L b256
            # shapes, one H100, 2026-11-28). Each query row is scaled by a power of two into [-2, 2),
            # which moves only its exponent, so fp16 cannot overflow; scores get the power back.
            q32 = q.to(tl.float32)
            exponent = (tl.max(tl.abs(q32), 1).to(tl.int32, bitcast=True) >> 23) & 0xFF
            exponent = tl.minimum(tl.maximum(exponent, 1), 253)  # zero rows and float32's extremes stay finite
            q_down = ((254 - exponent) << 23).to(tl.float32, bitcast=True)  # 2^-(exponent - 127)
            q_up = (exponent << 23).to(tl.float32, bitcast=True)
            q = (q32 * q_down[:, None]).to(tl.float16)
            score_scale = q_up * scale_log2
            if PACKED:  # the widened codes are 2^-8 of their values
                score_scale = score_scale * 256.0
            # Value scales enter the probabilities relative to the largest seen so far (online, as the
            # softmax's maximum), so p * scale stays in [0, 1] where fp16 keeps 11 bits.
            # (one value for the whole program, kept as a row vector: Triton carries tensors through loops)
            v_max = tl.full([BLOCK_M], 1.1754943508222875e-38, tl.float32)  # float32's tiny: never 0
        k_base = K + b * k_sb + h * k_sh
        v_base = V + b * v_sb + h * v_sh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start in range(0, num_keys, BLOCK_N):
            n = start + keys
            key_ok = n < num_keys
            if PACKED:  # K and V are the codes as int16 words (two codes each), strides in words
                pairs = tl.arange(0, HEAD_DIM // 2)
                k = _widen_e4m3_pairs(tl.load(k_base + n[:, None] * k_sn + pairs[None, :], mask=key_ok[:, None], other=0))
                v = _widen_e4m3_pairs(tl.load(v_base + n[:, None] * v_sn + pairs[None, :], mask=key_ok[:, None], other=0))
            else:
                k = tl.load(k_base + n[:, None] * k_sn + cols[None, :], mask=key_ok[:, None], other=0.0)
                v = tl.load(v_base + n[:, None] * v_sn + cols[None, :], mask=key_ok[:, None], other=0.0)
            if SCALED:  # e4m3 codes widen exactly to fp16
                s = tl.dot(q, tl.trans(k.to(tl.float16))) * score_scale[:, None]
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
                v_max_new = tl.maximum(v_max, tl.max(v_scale, 0))
                # one division per block, then a product per key: with a division per score the kernel took
                # 224 us where fp16 operands without the value normalisation took 144 (ARPG-L b256 shapes, one
                # H100, 2026-11-28); this form is not timed yet
                p = p * (v_scale * (1.0 / tl.max(v_max_new, 0)))[None, :]
                acc = acc * (alpha * (v_max / v_max_new))[:, None] + tl.dot(p.to(tl.float16), v.to(tl.float16))
                v_max = v_max_new
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        if SCALED:
            out = out * (v_max * 256.0 if PACKED else v_max)[:, None]
        tl.store(O + b * o_sb + h * o_sh + rows[:, None] * o_sm + cols[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_scale: Optional[torch.Tensor] = None,
                     v_scale: Optional[torch.Tensor] = None, block_n: Optional[int] = None, num_warps: int = 4,
                     num_stages: Optional[int] = None, packed: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q (B, H, n_q, d) and k, v (B, H, n_k, d), no mask. The query
    tile is n_q rounded up to a power of two, at least 16 (tl.dot's smallest).

    k_scale, v_scale: (B, H, n_k) float32 scales (last dim contiguous) of float8_e4m3fn k and v, which
    then stand for k * k_scale[..., None] and v * v_scale[..., None]; None for k and v in q's dtype.
    packed: read FP8 codes as int16 pairs (where every stride but the last and the offset are even, as in
    a KVCache); else as e4m3. Off by default until a GPU has compiled and timed it
    (scripts/bench_cache_kernels.py compares the two).
    Returns (B, H, n_q, d) in q's dtype, a transposed view of a (B, n_q, H, d) tensor. See `supports`.
    """
    batch, heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    out = torch.empty(batch, num_queries, heads, head_dim, dtype=q.dtype, device=q.device).transpose(1, 2)
    scale_log2 = 1.0 / math.sqrt(head_dim) * 1.4426950408889634  # log2(e)
    scaled = k_scale is not None
    # FP8 codes are half the bytes per key: longer blocks and a deeper pipeline keep more of them in flight
    # (fp16 operands, ARPG-L b256 shapes: 144 us in 128-key blocks, 3 stages, against 168.5 in 64-key blocks,
    # 2 stages; scripts/bench_cache_kernels.py, one H100, 2026-11-28)
    block_n = block_n or (128 if scaled else 64)
    num_stages = num_stages or (3 if scaled else 2)
    if scaled:
        assert k_scale.stride(-1) == 1 and v_scale.stride(-1) == 1, "scales must be contiguous along the keys"
        packed = packed and all(step % 2 == 0 for t in (k, v) for step in (*t.stride()[:-1], t.storage_offset()))
        if packed:  # pairs of codes as int16 words: the kernel widens them in registers
            k, v = k.view(torch.int16), v.view(torch.int16)
    else:
        k_scale = v_scale = k  # never read: SCALED is off
    _decode_attention_kernel[(batch * heads,)](
        q, k, v, out, k_scale, v_scale, scale_log2, heads, num_queries, num_keys,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        k_scale.stride(0), k_scale.stride(1), v_scale.stride(0), v_scale.stride(1),
        BLOCK_M=max(16, triton.next_power_of_2(num_queries)), BLOCK_N=block_n, HEAD_DIM=head_dim,
        SCALED=scaled, PACKED=scaled and packed, num_warps=num_warps, num_stages=num_stages)
    return out

"""ARPG's two attention kinds (self-attention over the known tokens with a KV cache, cross-attention of
the [MASK] queries over the shared set) and which kernel runs them: one rule of the inputs' shapes and
flags, so the reference loop and the CUDA-graph path pick the same kernel for the same step and agree
exactly. docs/speed.md gives the timings behind each rule (python -m scripts.bench_sample)."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from autoregressive.kernels import decode_attention
from autoregressive.models.kv_cache import KVCache, ScaledCodes
from autoregressive.models.official_names import keep_official_names
from autoregressive.models.rope import apply_rope

# Few queries per row over a short cache: the memory-efficient kernel beats cuDNN's below ~160 keys.
SHORT_DECODE_QUERIES, SHORT_DECODE_KEYS = 8, 128


def attend(q, k, v, causal: bool, dropout_p: float = 0.0):
    """Attention of q (B, H, n_q, d) over k, v (B, H, n_k, d), or over ScaledCodes k, v of a quantised
    (FP8 or int8) cache.

    causal: query i sees keys j <= i + n_k - n_q (aligned at the end: the queries are the newest
    entries, or, in cross-attention, the targets after the class tokens).
    """
    scaled = isinstance(k, ScaledCodes)
    codes, scales = ((k.data, v.data), (k.scale, v.scale)) if scaled else ((k, v), (None, None))
    if not causal and dropout_p == 0.0 and decode_attention.supports(q, *codes, scaled=scaled):
        # Decoding: a few queries per row over the KV cache, one Triton program per row and head reads
        # the keys once, where SDPA would pad the queries to 64-128 rows. Quantised: it reads the codes and scales.
        return decode_attention.decode_attention(q, *codes, *scales)
    if scaled:  # every other kernel reads the cache dequantised to the queries' dtype
        k, v = k.dequantise(q.dtype), v.dequantise(q.dtype)
    n_q, n_k = q.shape[2], k.shape[2]
    if not causal and q.is_cuda and n_q <= SHORT_DECODE_QUERIES and n_k <= SHORT_DECODE_KEYS:
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)
    if not causal or n_q == n_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p)
    allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(diagonal=n_k - n_q)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)


def split_heads(x, n_head: int):
    """(B, n, H*d) -> (B, n, H, d)."""
    return x.view(*x.shape[:2], n_head, -1)


def merge_heads(x):
    """(B, H, n, d) -> (B, n, H*d)."""
    return x.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """to_q, to_k, to_v stored as one matrix `qkv`."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        keep_official_names(self, "qkv", ("to_q", "to_k", "to_v"))

    def cache_slot(self, x, cache: Optional[KVCache] = None, cache_index: int = 0, **_):
        """Where `project` writes the step's keys and values for input x (B, n, D): this layer's buffers of
        a cache in the weights' dtype and the first new position, so a compiled `project` stores them from
        its RoPE kernel instead of a copy after it; () without a cache or for a quantised one (written by
        its own kernel in `attend`)."""
        if cache is None or cache.quantised:
            return ()
        return cache.keys[cache_index], cache.values[cache_index], cache.reserve(x.shape[1])

    def project(self, x, rope, cache_keys=None, cache_values=None, start: int = 0):
        """Normalised input (B, n, D) -> rotated q, k and plain v, each (B, H, n, d); with a cache slot
        (see cache_slot), k and v go into it at positions [start, start + n) and (q, None, None) returns."""
        qkv = self.qkv(x).unflatten(-1, (3, self.n_head, -1))  # (B, n, 3, H, d)
        qk = apply_rope(qkv[:, :, :2], rope)  # q and k rotated in one pass
        q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        if cache_keys is None:
            return q, k, v
        cache_keys[:, :, start:start + k.shape[2]] = k
        cache_values[:, :, start:start + v.shape[2]] = v
        return q, None, None

    def attend(self, projected, causal: bool, dropout_p: float, cache: Optional[KVCache] = None,
               cache_index: int = 0):
        q, k, v = projected
        if cache is not None and k is None:  # written into the cache by `project`
            k, v = cache.stored(cache_index, q.shape[2])
        elif cache is not None:
            k, v = cache.write(cache_index, k, v)  # (B, H, cached + n, d)
        return attend(q, k, v, causal, dropout_p)


class CrossAttention(nn.Module):
    """Queries from the [MASK] stream; keys/values are the shared set, already in (B, H, n, d)."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def cache_slot(self, x, **_):
        """No cache of its own: the shared set is written once a step, before the cross-attention layers."""
        return ()

    def project(self, x, rope):
        """Normalised queries (B, m, D) rotated with their targets' positions -> (B, H, m, d)."""
        return apply_rope(split_heads(self.to_q(x), self.n_head), rope).transpose(1, 2)

    def attend(self, q, k, v, causal: bool, dropout_p: float):
        return attend(q, k, v, causal, dropout_p)

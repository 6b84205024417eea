"""Preallocated key/value cache for ARPG decoding.

ARPG keeps one key/value set per self-attention layer plus one shared set that every guided
cross-attention layer reads. All of them grow by the same tokens at the same time, so one cache object
holds them in two buffers of shape (num_sets, B, H, max_len, head_dim) and one shared length.

A quantised cache (opt-in: SamplingConfig.kv_cache) stores each key and value vector as one-byte codes
with one float32 scale, which halves what decoding reads from the cache: int8 (127 levels a side, the
vector's largest entry at +-127) or float8 e4m3 (3 mantissa bits). Per vector of 64, int8's rounding
error is about a quarter of e4m3's (rms 0.6% against 2.5% of the vector's size for Gaussian entries).
"""
from typing import NamedTuple, Tuple

import torch

from autoregressive.kernels import cache_write

FP8_DTYPE = torch.float8_e4m3fn
CODE_MAX = cache_write.CODE_MAX_BY_DTYPE  # 448 for e4m3, 127 for int8: a vector's largest |entry|
QUANTISED_DTYPES = tuple(CODE_MAX)


class ScaledCodes(NamedTuple):
    """Vectors stored as one-byte codes times one float32 scale each: x ~= data * scale[..., None]."""
    data: torch.Tensor  # (..., d) float8_e4m3fn or int8
    scale: torch.Tensor  # (...) float32

    def dequantise(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.data.float() * self.scale.unsqueeze(-1)).to(dtype)


def quantise(x: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(..., d) -> (..., d) codes of `dtype` and (...) float32 scales (amax over d times float32(1 / code max)).

    e4m3: rounding to nearest keeps 3 mantissa bits, so each entry is off by at most 1/16 of itself, or by
    scale / 1024 below e4m3's normal range. int8: each entry is off by at most scale / 2, 1/254 of the
    vector's largest entry. An all-zero vector (the class token's key) gets scale 0."""
    code_max = CODE_MAX[dtype]
    # A product, not amax / code_max: CUDA torch divides by a Python number as a product with its reciprocal
    # and the CPU divides exactly, so only the product gives the same bits everywhere (and in the Triton kernel).
    scale = x.abs().amax(-1).float() * cache_write.inverse_code_max(dtype)
    divisor = scale.clamp_min(cache_write.FLOAT32_TINY).unsqueeze(-1)  # the kernel's floor too
    quotient = x.float() / divisor
    if not dtype.is_floating_point:
        quotient = quotient.round()  # to nearest even, as the kernel; the cast below truncates
    # e4m3 has no infinity: a quotient rounded just past 448 must not become NaN where the cast does not saturate.
    return quotient.clamp(-code_max, code_max).to(dtype), scale


def write_quantised(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
    """quantise(x, codes.dtype) into `codes` and `scales` (views into a cache): one Triton kernel where
    the GPU has it (autoregressive/kernels/cache_write.py, the same bits), else the eager ops."""
    if cache_write.supports(x, codes, scales):
        cache_write.quantise_into(x, codes, scales)
    else:
        codes[...], scales[...] = quantise(x, codes.dtype)


class KVCache:
    """Keys and values written by position into buffers allocated once.

    Set i < num_self_layers belongs to self-attention layer i; the last set is the shared key/value
    set of the cross-attention layers. A decoding step calls `write` for every set with the step's new
    tokens at positions [length, length + n), then `advance(n)` once.

    dtype float8_e4m3fn or int8: keys and values are quantised as they are written, with one float32
    scale per (set, row, head, position) in key_scales / value_scales, and read back as ScaledCodes.
    """

    def __init__(self, num_sets: int, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (num_sets, batch_size, num_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.key_scales = self.value_scales = None
        if dtype in QUANTISED_DTYPES:
            self.key_scales = torch.zeros(shape[:-1], dtype=torch.float32, device=device)
            self.value_scales = torch.zeros(shape[:-1], dtype=torch.float32, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    @property
    def quantised(self) -> bool:
        return self.key_scales is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers, scales included."""
        buffers = (self.keys, self.values, self.key_scales, self.value_scales)
        return sum(buffer.numel() * buffer.element_size() for buffer in buffers if buffer is not None)

    def reserve(self, num_tokens: int) -> int:
        """The first position of the current step's `num_tokens` new tokens; refused past the capacity."""
        end = self.length + num_tokens
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        return self.length

    def stored(self, index: int, num_tokens: int):
        """Set `index`'s keys and values (B, H, length + num_tokens, head_dim), views, once the current
        step's tokens have been written into `keys[index]` and `values[index]` by their producer (a
        self-attention layer's before_attention, so a compiled one writes them from its fused kernel)."""
        end = self.reserve(num_tokens) + num_tokens
        return self.keys[index, :, :, :end], self.values[index, :, :, :end]

    def write(self, index: int, keys: torch.Tensor, values: torch.Tensor):
        """Store keys/values (B, H, n, head_dim) of set `index` after the cached ones.

        Returns the keys and values of all positions so far, (B, H, length + n, head_dim) views, or
        ScaledCodes views of the codes and (B, H, length + n) scales for a quantised cache.
        """
        end = self.reserve(keys.shape[2]) + keys.shape[2]
        if not self.quantised:
            self.keys[index, :, :, self.length:end] = keys
            self.values[index, :, :, self.length:end] = values
            return self.keys[index, :, :, :end], self.values[index, :, :, :end]
        stored = []
        for buffer, scales, new in ((self.keys, self.key_scales, keys), (self.values, self.value_scales, values)):
            write_quantised(new, buffer[index, :, :, self.length:end], scales[index, :, :, self.length:end])
            stored.append(ScaledCodes(buffer[index, :, :, :end], scales[index, :, :, :end]))
        return tuple(stored)

    def advance(self, num_tokens: int) -> None:
        """Mark the tokens written by the current step as cached."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every cached token; the buffers are reused."""
        self.length = 0

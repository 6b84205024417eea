"""Preallocated key/value cache for ARPG decoding.

ARPG keeps one key/value set per self-attention layer plus one shared set that every guided
cross-attention layer reads. All of them grow by the same tokens at the same time, so one cache object
holds them in two buffers of shape (num_sets, B, H, max_len, head_dim) and one shared length.
"""
import torch


class KVCache:
    """Keys and values written by position into buffers allocated once.

    Set i < num_self_layers belongs to self-attention layer i; the last set is the shared key/value
    set of the cross-attention layers. A decoding step calls `write` for every set with the step's new
    tokens at positions [length, length + n), then `advance(n)` once.
    """

    def __init__(self, num_sets: int, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (num_sets, batch_size, num_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def write(self, index: int, keys: torch.Tensor, values: torch.Tensor):
        """Store keys/values (B, H, n, head_dim) of set `index` after the cached ones.

        Returns the keys and values of all positions so far, (B, H, length + n, head_dim) views.
        """
        end = self.length + keys.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        self.keys[index, :, :, self.length:end] = keys
        self.values[index, :, :, self.length:end] = values
        return self.keys[index, :, :, :end], self.values[index, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Mark the tokens written by the current step as cached."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every cached token; the buffers are reused."""
        self.length = 0

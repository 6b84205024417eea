"""Pure functions of ARPG's parallel decoding: the step plan, the guidance scale, filtering, drawing."""
import math
from typing import List, Optional

import numpy as np
import torch

from autoregressive.utils.cli import UserError

SAMPLE_SCHEDULES = ("arccos", "cosine")
CFG_SCHEDULES = ("linear", "constant")


def masked_ratio(step: int, num_steps: int, schedule: str) -> float:
    """Fraction of tokens still masked after step `step` (0-based) of `num_steps`."""
    progress = 1.0 * (step + 1) / num_steps
    # numpy, as in the released sampler, so int(N * ratio) rounds the same way.
    if schedule == "arccos":
        return float(np.arccos(progress) / (math.pi * 0.5))
    if schedule == "cosine":
        return float(np.cos(math.pi / 2.0 * progress))
    raise ValueError(f"unknown sample schedule {schedule!r}; choose one of {SAMPLE_SCHEDULES}")


def step_sizes(num_tokens: int, num_steps: int, schedule: str) -> List[int]:
    """How many tokens each decoding step generates; the sizes sum to num_tokens.

    Every step but the last keeps at least one token masked; the last step generates the rest.
    """
    if not 1 <= num_steps <= num_tokens:
        raise UserError(f"num_steps must be in [1, {num_tokens}] for {num_tokens} tokens, got {num_steps}")
    sizes, done = [], 0
    for step in range(num_steps):
        if step == num_steps - 1:
            sizes.append(num_tokens - done)
            break
        kept_masked = max(1, min(num_tokens - done - 1, int(num_tokens * masked_ratio(step, num_steps, schedule))))
        sizes.append(num_tokens - done - kept_masked)
        done += sizes[-1]
    return sizes


def guidance_scale(cfg_scale: float, schedule: str, done_after: int, num_tokens: int) -> float:
    """Guidance scale of a step after which `done_after` of `num_tokens` tokens are generated."""
    if schedule == "linear":
        return 1.0 + (cfg_scale - 1.0) * done_after / num_tokens
    if schedule == "constant":
        return cfg_scale
    raise ValueError(f"unknown cfg schedule {schedule!r}; choose one of {CFG_SCHEDULES}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf the logits outside the top-k and outside the top-p nucleus, on the last dim.

    Works on any leading shape, e.g. (B, n, V). The nucleus keeps the most likely tokens up to and
    including the first one at which the cumulative probability exceeds top_p.
    """
    if top_k > 0:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # A token is dropped when the tokens ranked before it already exceed top_p.
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
        drop = drop_sorted.scatter(-1, sorted_index, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw one token per position from logits (..., V); temperature 0 is greedy argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature != 1.0:  # x / 1 is x: skipping it saves a copy of the logits (0.44 GiB, XXL batch 256)
        logits = logits / max(temperature, 1e-5)
    logits = filter_logits(logits, top_k, top_p)
    probs = logits.softmax(dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(probs.shape[:-1])


def random_orders(batch_size: int, num_tokens: int, generator: Optional[torch.Generator] = None,
                  device=None) -> torch.Tensor:
    """(B, N) long: one random permutation of 0..N-1 per row."""
    if generator is not None:
        device = generator.device
    return torch.rand(batch_size, num_tokens, generator=generator, device=device).argsort(dim=1)

"""The reference decoding loop of ARPG (randomized parallel decoding with a KV cache).

Step s feeds the tokens sampled at step s-1 (at step 0: the class token) into the self-attention
layers, where they see each other and everything cached, and queries the next positions of the order
with [MASK] embeddings rotated to those positions. With guidance, the batch is doubled: the second half
carries the "no class" token, and logits combine as uncond + (cond - uncond) * scale.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from autoregressive.sampling import CFG_SCHEDULES, draw_tokens, guidance_scale, random_orders, step_sizes


@dataclass(frozen=True)
class SamplingConfig:
    num_steps: int = 64
    cfg_scale: float = 4.0
    cfg_schedule: str = "linear"
    sample_schedule: str = "arccos"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"unknown cfg schedule {self.cfg_schedule!r}; choose one of {CFG_SCHEDULES}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def uses_guidance(self) -> bool:
        return self.cfg_scale != 1.0


def check_class_ids(condition: torch.Tensor, num_classes: int) -> None:
    """Raise a ValueError if any (B,) class id is outside [0, num_classes)."""
    if condition.ndim != 1:
        raise ValueError(f"condition must be (B,) class ids, got shape {tuple(condition.shape)}")
    bad = condition[(condition < 0) | (condition >= num_classes)]
    if bad.numel():
        raise ValueError(f"class id {int(bad[0])} is out of range: the model has {num_classes} classes "
                         f"(ids 0..{num_classes - 1})")


def prepare_orders(orders: Optional[torch.Tensor], batch_size: int, num_tokens: int,
                   generator: Optional[torch.Generator], device) -> torch.Tensor:
    """(N,) shared or (B, N) orders, or None for a random one per sample -> (B, N) long on device."""
    if orders is None:
        return random_orders(batch_size, num_tokens, generator, device).to(device)
    orders = torch.as_tensor(orders, device=device).long()
    if orders.ndim == 1:
        orders = orders.unsqueeze(0).expand(batch_size, -1)
    if orders.shape != (batch_size, num_tokens):
        raise ValueError(f"orders must be ({num_tokens},) or ({batch_size}, {num_tokens}), got {tuple(orders.shape)}")
    identity = torch.arange(num_tokens, device=device).expand(batch_size, -1)
    if not torch.equal(orders.sort(dim=1).values, identity):
        raise ValueError(f"each row of orders must be a permutation of 0..{num_tokens - 1}")
    return orders


@torch.inference_mode()
def generate(model, condition: torch.Tensor, sampling: Optional[SamplingConfig] = None,
             orders: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
             **sampling_kwargs) -> torch.Tensor:
    """Sample image tokens for (B,) class ids; returns (B, N) long in raster order.

    sampling: a SamplingConfig, or its fields as keyword arguments. orders: (N,) or (B, N) generation
    orders (orders[..., i] is the raster index of the i-th generated token); None draws one per sample
    from `generator`, which also drives the draws of tokens.
    """
    sampling = sampling or SamplingConfig(**sampling_kwargs)
    config = model.config
    check_class_ids(condition, config.num_classes)
    batch, num_tokens, device = condition.shape[0], config.block_size, condition.device
    orders = prepare_orders(orders, batch, num_tokens, generator, device)
    plan = step_sizes(num_tokens, sampling.num_steps, sampling.sample_schedule)
    rows = 2 * batch if sampling.uses_guidance else batch

    fed_ids = model.class_token_ids(condition)  # (B, C)
    if sampling.uses_guidance:
        fed_ids = torch.cat([fed_ids, torch.full_like(fed_ids, config.null_class_id)])
    fed_slots = model.class_slots(rows, device)
    target_slots = orders + config.cls_token_num
    cache = model.new_cache(rows)
    tokens = torch.empty(batch, num_tokens, dtype=torch.long, device=device)  # generation order
    done = 0
    for size in plan:
        query_slots = target_slots[:, done:done + size]
        if sampling.uses_guidance:
            query_slots = query_slots.repeat(2, 1)
        logits = model.decode(fed_ids, fed_slots, query_slots, causal=False, cache=cache)  # (rows, size, V)
        if sampling.uses_guidance:
            cond, uncond = logits.chunk(2)
            scale = guidance_scale(sampling.cfg_scale, sampling.cfg_schedule, done + size, num_tokens)
            logits = uncond + (cond - uncond) * scale
        sampled = draw_tokens(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)
        tokens[:, done:done + size] = sampled
        done += size
        fed_ids = sampled.repeat(2, 1) if sampling.uses_guidance else sampled
        fed_slots = query_slots
    return torch.empty_like(tokens).scatter_(1, orders, tokens)

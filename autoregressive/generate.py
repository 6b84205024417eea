"""The reference decoding loop of ARPG (randomized parallel decoding with a KV cache).

Step s feeds the tokens sampled at step s-1 (at step 0: the class token) into the self-attention
layers, where they see each other and everything cached, and queries the next positions of the order
with [MASK] embeddings rotated to those positions. With guidance, the batch is doubled: the second half
carries the "no class" token, and logits combine as uncond + (cond - uncond) * scale.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

from autoregressive.sampling import CFG_SCHEDULES, draw_tokens, guidance_scale, random_orders, step_sizes
from autoregressive.utils.cli import UserError


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
            raise UserError(f"unknown cfg schedule {self.cfg_schedule!r}; choose one of {CFG_SCHEDULES}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if self.num_steps < 1:
            raise UserError(f"--step must be >= 1, got {self.num_steps}")
        if self.cfg_scale < 0:  # 0 is the "no class" prediction alone, 1 the class alone; below 0 means nothing
            raise UserError(f"--cfg-scale must be >= 0, got {self.cfg_scale}")

    @property
    def uses_guidance(self) -> bool:
        return self.cfg_scale != 1.0


def check_class_ids(condition: torch.Tensor, num_classes: int) -> None:
    """Raise a UserError if any (B,) class id is outside [0, num_classes)."""
    if condition.ndim != 1:
        raise ValueError(f"condition must be (B,) class ids, got shape {tuple(condition.shape)}")
    bad = condition[(condition < 0) | (condition >= num_classes)]
    if bad.numel():
        raise UserError(f"class id {int(bad[0])} is out of range: the model has {num_classes} classes "
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


def known_first(orders: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
    """Reorder each (B, N) order so the known positions come first; both groups keep their order."""
    is_unknown = (~known_mask).gather(1, orders).to(torch.uint8)
    return orders.gather(1, is_unknown.sort(dim=1, stable=True).indices)


def check_known(known: torch.Tensor, known_mask: torch.Tensor, batch_size: int, num_tokens: int,
                vocab_size: int) -> int:
    """Validate (B, N) known tokens and mask; return the number of known tokens per sample."""
    for name, value in (("known", known), ("known_mask", known_mask)):
        if value.shape != (batch_size, num_tokens):
            raise ValueError(f"{name} must be ({batch_size}, {num_tokens}), got {tuple(value.shape)}")
    counts = known_mask.sum(dim=1)
    if not torch.all(counts == counts[0]):
        raise UserError("every sample must have the same number of known tokens; edit one mask per batch")
    num_known = int(counts[0])
    if num_known == num_tokens:
        raise UserError("known_mask marks every token as known: there is nothing to generate")
    picked = known[known_mask]
    if picked.numel() and (picked.min() < 0 or picked.max() >= vocab_size):
        raise UserError(f"known tokens must be image tokens in [0, {vocab_size})")
    return num_known


@dataclass
class DecodingStart:
    """What every decoding loop needs before its first step."""
    orders: torch.Tensor  # (B, N) raster positions in generation order, known positions first
    num_known: int  # known tokens per sample, fed with the class token in the first step
    plan: List[int]  # tokens generated per step, over the unknown positions
    fed_ids: torch.Tensor  # (rows, C + num_known) first-step tokens; rows = 2B with guidance
    fed_slots: torch.Tensor  # (rows, C + num_known)


def start_decoding(model, condition, sampling: SamplingConfig, orders=None, generator=None,
                   known=None, known_mask=None) -> DecodingStart:
    """Check the inputs and lay out the first step: class token (and known tokens), orders, plan."""
    config = model.config
    check_class_ids(condition, config.num_classes)
    batch, num_tokens, device = condition.shape[0], config.block_size, condition.device
    orders = prepare_orders(orders, batch, num_tokens, generator, device)
    num_known = 0
    if known_mask is not None:
        if known is None:
            raise ValueError("known_mask needs the known tokens too (known=...)")
        num_known = check_known(known, known_mask, batch, num_tokens, config.vocab_size)
        orders = known_first(orders, known_mask)
    fed_ids = model.class_token_ids(condition)  # (B, C)
    null_ids = torch.full_like(fed_ids, config.null_class_id)
    fed_slots = model.class_slots(batch, device)
    if num_known:
        known_positions = orders[:, :num_known]
        fed_ids = torch.cat([fed_ids, known.gather(1, known_positions)], dim=1)
        null_ids = torch.cat([null_ids, fed_ids[:, config.cls_token_num:]], dim=1)
        fed_slots = torch.cat([fed_slots, known_positions + config.cls_token_num], dim=1)
    if sampling.uses_guidance:
        fed_ids, fed_slots = torch.cat([fed_ids, null_ids]), fed_slots.repeat(2, 1)
    # An edit may leave fewer tokens to generate than steps: then one token per step.
    num_steps = min(sampling.num_steps, num_tokens - num_known) if num_known else sampling.num_steps
    plan = step_sizes(num_tokens - num_known, num_steps, sampling.sample_schedule)
    return DecodingStart(orders, num_known, plan, fed_ids, fed_slots)


def fed_capacity(start: DecodingStart) -> int:
    """Cache positions a decoding needs: the last step's tokens are drawn but never fed back."""
    return start.fed_ids.shape[1] + sum(start.plan[:-1])


def guide(logits: torch.Tensor, sampling: SamplingConfig, done_after: int, num_generated: int) -> torch.Tensor:
    """Combine (2B, n, V) cond/uncond logits into (B, n, V); pass (B, n, V) through without guidance."""
    if not sampling.uses_guidance:
        return logits
    cond, uncond = logits.chunk(2)
    return uncond + (cond - uncond) * guidance_scale(sampling.cfg_scale, sampling.cfg_schedule, done_after,
                                                     num_generated)


@torch.inference_mode()
def generate(model, condition: torch.Tensor, sampling: Optional[SamplingConfig] = None,
             orders: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
             known: Optional[torch.Tensor] = None, known_mask: Optional[torch.Tensor] = None,
             **sampling_kwargs) -> torch.Tensor:
    """Sample image tokens for (B,) class ids; returns (B, N) long in raster order.

    sampling: a SamplingConfig, or its fields as keyword arguments. orders: (N,) or (B, N) generation
    orders (orders[..., i] is the raster index of the i-th generated token); None draws one per sample
    from `generator`, which also drives the draws of tokens.
    known, known_mask: (B, N) long tokens and bool mask of the positions to keep (editing). The known
    tokens enter the cache first, in one causal pass (the cache teacher forcing would build); the
    other positions are generated in the order's sequence, the schedules running over them alone.
    """
    sampling = sampling or SamplingConfig(**sampling_kwargs)
    start = start_decoding(model, condition, sampling, orders, generator, known, known_mask)
    cls_num, num_known = model.config.cls_token_num, start.num_known
    target_slots = start.orders[:, num_known:] + cls_num  # (B, M) the positions to generate
    batch, num_generated = target_slots.shape
    copies = 2 if sampling.uses_guidance else 1
    cache = model.new_cache(copies * batch, fed_capacity(start))
    tokens = torch.empty_like(target_slots)  # generation order
    fed_ids, fed_slots, causal, done = start.fed_ids, start.fed_slots, num_known > 0, 0
    for size in start.plan:
        query_slots = target_slots[:, done:done + size].repeat(copies, 1)
        logits = model.decode(fed_ids, fed_slots, query_slots, causal=causal, cache=cache)  # (rows, size, V)
        logits = guide(logits, sampling, done + size, num_generated)
        sampled = draw_tokens(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)
        tokens[:, done:done + size] = sampled
        done += size
        fed_ids, fed_slots, causal = sampled.repeat(copies, 1), query_slots, False
    out = known.clone() if known is not None else torch.empty_like(start.orders)
    return out.scatter_(1, start.orders[:, num_known:], tokens)

"""Spatial conditions for controllable generation (the paper's extension; not in the release).

A condition map gives one token of a small condition vocabulary (an edge pattern, a binarised shape)
per image position, in raster order. A model built with `condition_vocab_size > 0` queries each
target position with the embedding of the condition token there instead of the shared [MASK]
embedding; the query is then rotated with the target's 2-D RoPE exactly as the [MASK] query is. The
last row of the condition table, id `condition_vocab_size`, is "no condition": a dropped map in
training, the unconditional half of guidance at sampling, and any position a partial map leaves free.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn


def check_no_condition(condition: Optional[torch.Tensor]) -> None:
    """A condition handed to a model without conditions is an error, not silently ignored."""
    if condition is not None:
        raise ValueError("this model takes no condition map; build it with condition_vocab_size > 0 "
                         "(--condition-vocab-size to sample, --condition-path to train)")


def check_condition_map(condition_map: torch.Tensor, batch_size: int, num_tokens: int,
                        condition_vocab_size: int) -> None:
    """Raise a ValueError unless condition_map is (B, N) integer ids in [0, condition_vocab_size]
    (the last id: no condition at that position) for a model that takes conditions."""
    if not condition_vocab_size:
        check_no_condition(condition_map)
    if condition_map.shape != (batch_size, num_tokens) or condition_map.is_floating_point():
        raise ValueError(f"the condition map must be ({batch_size}, {num_tokens}) integer ids in raster order, "
                         f"got {condition_map.dtype} {tuple(condition_map.shape)}")
    bad = condition_map[(condition_map < 0) | (condition_map > condition_vocab_size)]
    if bad.numel():
        raise ValueError(f"condition id {int(bad[0])} is out of range: the model has {condition_vocab_size} "
                         f"condition tokens (ids 0..{condition_vocab_size - 1}, {condition_vocab_size} = none)")


def drop_condition_maps(condition_map: torch.Tensor, null_id: int, drop_prob: float,
                        class_dropped: torch.Tensor) -> torch.Tensor:
    """Training: (B, N) maps with whole rows set to "no condition", each with drop_prob and always
    where the class was dropped (class_dropped (B,) bool), so the fully unconditional input that
    guidance subtracts is trained as often as class dropout alone would train it."""
    dropped = class_dropped
    if drop_prob > 0:
        dropped = dropped | (torch.rand(dropped.shape, device=dropped.device) < drop_prob)
    return condition_map.masked_fill(dropped.unsqueeze(1), null_id)


def fresh_condition_parameters(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """New condition parameters for `model` fine-tuned from a class-only state dict: every row of the
    condition table is a copy of the state's [MASK] embedding, so the fine-tuned model starts as exactly
    the class-only one (for any condition map) and learns to use the condition from there."""
    mask_row = state["embeddings.weight"][model.config.mask_token_id]
    return {"condition_embeddings.weight": mask_row.expand_as(model.condition_embeddings.weight).clone()}


def target_queries(model: nn.Module, query_slots: torch.Tensor, query_conditions: Optional[torch.Tensor]):
    """The queries (B, m, D) of the targets at (B, m) slots: the shared [MASK] embedding, or for a
    condition model the embedding of each target's condition id (B, m) ("no condition" where None),
    embedded at the slot as the [MASK] query is; the cross layers rotate either with the slot's RoPE."""
    config = model.config
    if not config.condition_vocab_size:
        check_no_condition(query_conditions)
        return model.embed(torch.full_like(query_slots, config.mask_token_id), query_slots)
    if query_conditions is None:
        query_conditions = torch.full_like(query_slots, config.null_condition_id)
    return model.embed(query_conditions, query_slots, model.condition_embeddings)


def teacher_forced_conditions(config, condition_map: Optional[torch.Tensor], orders: torch.Tensor,
                              class_ids: torch.Tensor, training: bool) -> Optional[torch.Tensor]:
    """The condition ids (B, N) of teacher forcing's targets, in generation order `orders` (B, N), from
    a (B, N) raster map (None: no condition anywhere); in training dropped per drop_condition_maps
    (class_ids (B,): the class rows actually fed). None for a model without conditions (ARPGConfig)."""
    if not config.condition_vocab_size:
        check_no_condition(condition_map)
        return None
    if condition_map is None:
        return torch.full_like(orders, config.null_condition_id)
    check_condition_map(condition_map, *orders.shape, config.condition_vocab_size)
    if training:
        condition_map = drop_condition_maps(condition_map, config.null_condition_id, config.condition_dropout_prob,
                                            class_ids == config.null_class_id)
    return condition_map.long().gather(1, orders)

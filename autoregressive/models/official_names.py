"""The released checkpoints' names for our fused projections.

Three bias-free projections of one input run as one matmul each: SelfAttention.qkv (to_q, to_k, to_v),
FeedForward.w13 (w1, w3) and TwoPassDecoder.to_kv (the shared set's to_k, to_v); each fused weight is
the row-wise concatenation of its parts. The parameters keep the fused names and the state dict speaks
the release's: converted once on export (a state-dict hook splits the fused weight) and once on load
(a load pre-hook concatenates the parts, as gpt-fast's load_hook does), so released checkpoints load
unchanged and ours keep their format. A state dict under the fused names loads as it is.

Sharded (FSDP, DTensor) weights are exported under their fused names: splitting one would gather it,
and torch.distributed.checkpoint keys shards by parameter name.
"""
from typing import Tuple

import torch
import torch.nn as nn


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is an FSDP2 shard (a DTensor), which the export hook leaves as it is."""
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor
    return isinstance(tensor, DTensor)


def keep_official_names(module: nn.Module, fused: str, parts: Tuple[str, ...]) -> None:
    """Export `module.<fused>.weight` as `<part>.weight` tensors and merge them back on load."""

    def split_on_export(mod, state_dict, prefix, local_metadata):
        if is_dtensor(state_dict[prefix + fused + ".weight"]):
            return state_dict
        fused_weight = state_dict.pop(prefix + fused + ".weight")
        for name, piece in zip(parts, fused_weight.chunk(len(parts))):
            state_dict[prefix + name + ".weight"] = piece.detach().clone()  # own storage, for safetensors
        return state_dict

    def merge_on_load(state_dict, prefix, *args):
        keys = [prefix + name + ".weight" for name in parts]
        if all(key in state_dict for key in keys):
            state_dict[prefix + fused + ".weight"] = torch.cat([state_dict.pop(key) for key in keys])

    module._register_state_dict_hook(split_on_export)
    module._register_load_state_dict_pre_hook(merge_on_load)

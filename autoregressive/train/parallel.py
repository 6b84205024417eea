"""Data parallelism for training: DDP (every rank holds the whole model) or FSDP2 (parameters,
gradients and optimizer state sharded over ranks, gathered layer by layer).

Under the exact precision policy FSDP keeps float32 parameters and the trainer keeps its bf16 autocast,
so a sharded run computes what the DDP run computes; only the order of the gradient reduction differs.
Other policies: autoregressive/train/precision.py.
"""
import contextlib
from typing import List

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from autoregressive.train.precision import Bf16Compute, fsdp_mixed_precision, prepare_model
from autoregressive.utils.cli import UserError
from autoregressive.utils.dist import DistInfo, is_distributed

DATA_PARALLEL_MODES = ("ddp", "fsdp")


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:  # torch 2.4 / 2.5 ship FSDP2 under its first name
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def decoder_layers(model: nn.Module) -> List[nn.Module]:
    """The transformer blocks of an ARPG model, in compute order: the units of sharding and compile."""
    return [*model.layers.self_dec, *model.layers.cross_dec]


def shard_model(model: nn.Module, device: torch.device, compile_layers: bool = False, mp_policy=None) -> nn.Module:
    """Apply FSDP2 in place: one unit per decoder layer, the rest (embeddings, head, norms) at the root.
    device: this rank's device; the mesh is built on its type (FSDP's default mesh is CUDA whenever a GPU
    is visible, which would move a CPU run's model there). compile_layers: torch.compile each layer before
    sharding (whole-model compile of an FSDP2 model needs newer torch than we support). mp_policy: a
    MixedPrecisionPolicy (None: float32 throughout)."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = _fully_shard()
    options = {"mesh": init_device_mesh(device.type, (torch.distributed.get_world_size(),))}
    if mp_policy is not None:
        options["mp_policy"] = mp_policy
    for layer in decoder_layers(model):
        if compile_layers:
            layer.compile()
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def rank_ordered_mean(process_group, bucket) -> torch.futures.Future[torch.Tensor]:  # DDP checks this annotation
    """DDP communication hook of --deterministic: each gradient becomes (g_0 + g_1 + ... + g_{n-1}) / n,
    added in rank order, whatever the bucket layout. A ring all-reduce adds the ranks' values of an element
    in an order set by the element's offset in its bucket, and DDP lays its buckets out anew after a
    process's first step, so the first step after a resume (still on the first layout) would round
    differently from the same step of an uninterrupted run (seen on 4 GPUs: equal losses at step 15, 2e-4
    apart at step 20). Two ranks are exact either way (a + b == b + a). Costs an all-gather instead of an
    all-reduce: n buckets of memory and about n / 2 times the traffic."""
    group = process_group if process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    parts = [torch.empty_like(buffer) for _ in range(world)]
    work = dist.all_gather(parts, buffer, group=group, async_op=True)

    def mean(_) -> torch.Tensor:
        total = parts[0].clone()
        for part in parts[1:]:
            total.add_(part)
        return total.div_(world)

    return work.get_future().then(mean)


def wrap_for_training(model: nn.Module, mode: str, info: DistInfo, compile_model: bool,
                      precision_policy: str = "exact", deterministic: bool = False) -> nn.Module:
    """The module the training step calls. The precision policy's changes to `model` come first (in
    place). ddp: (bf16 policy: Bf16Compute around it,) compile, then DDP when there are several ranks
    (deterministic: gradients averaged in rank order, see rank_ordered_mean). fsdp: shard `model` in place
    (compiling its layers, gathering parameters in the policy's dtype; its reduce-scatter layout never
    changes, so it is repeatable as it is); the returned module is `model` itself."""
    if mode not in DATA_PARALLEL_MODES:
        raise ValueError(f"--data-parallel must be one of {DATA_PARALLEL_MODES}, got {mode!r}")
    model = prepare_model(model, precision_policy, info.device)
    if mode == "fsdp":
        if not is_distributed():
            raise UserError("--data-parallel fsdp needs a process group: launch with torchrun "
                            "(torchrun --nproc_per_node=1 works on one GPU)")
        return shard_model(model, info.device, compile_layers=compile_model,
                           mp_policy=fsdp_mixed_precision(precision_policy))
    compute = Bf16Compute(model) if precision_policy == "bf16" else model  # FSDP casts by itself
    train_model = torch.compile(compute) if compile_model else compute
    if info.world_size > 1:
        ids = [info.device.index] if info.device.type == "cuda" else None
        train_model = DistributedDataParallel(train_model, device_ids=ids)
        if deterministic:
            train_model.register_comm_hook(None, rank_ordered_mean)
    return train_model


@contextlib.contextmanager
def skip_gradient_sync(train_model: nn.Module, skip: bool):
    """Accumulate gradients locally (no reduction across ranks) inside, when `skip`: the micro-batches
    before the last one of an optimizer step."""
    if not skip:
        yield
    elif isinstance(train_model, DistributedDataParallel):
        with train_model.no_sync():
            yield
    elif hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            train_model.set_requires_gradient_sync(True)
    else:  # one process: nothing is reduced anyway
        yield


def set_activation_memory_budget(budget: float) -> None:
    """torch.compile's min-cut partitioner keeps activations for the backward pass up to this share of
    what it would keep by default (1.0), recomputing the cheapest ops for the rest. Process-wide."""
    from torch._functorch import config as functorch_config

    if not hasattr(functorch_config, "activation_memory_budget"):
        raise RuntimeError("--activation-memory-budget needs a newer torch (torch._functorch.config has none)")
    functorch_config.activation_memory_budget = budget

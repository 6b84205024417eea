"""Process-group helpers that work the same under torchrun (NCCL on GPUs, gloo on CPUs) and in one
plain process (no process group at all)."""
import datetime
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from autoregressive.utils.cli import UserError
from autoregressive.utils.watchdog import install_orphan_watchdog


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", always_group: bool = False) -> DistInfo:
    """Join the torchrun process group if there is one; pick the device.

    device: "auto" (CUDA if available, else CPU), "cuda" or "cpu". NCCL serves CUDA, gloo the CPU.
    always_group: under torchrun, make a process group even for one process (FSDP needs one).
    Under torchrun, the worker also ends itself when its launcher dies (utils/watchdog.py).
    """
    install_orphan_watchdog()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is visible")
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    launched = "MASTER_ADDR" in os.environ and "RANK" in os.environ
    if (world_size > 1 or (always_group and launched)) and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": torch_device} if use_cuda else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistInfo(rank, world_size, local_rank, torch_device)


def free_port() -> int:
    """A TCP port nobody listens on now (a process group's or a local server's, started right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_one_process_group(device: str = "auto") -> DistInfo:
    """A process group of this one process, as torchrun --nproc_per_node=1 makes (FSDP needs one)."""
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29517"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    return init_distributed(device, always_group=True)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def check_shared_folder(path: str, wait_seconds: float = 60.0) -> None:
    """Raise on every rank unless every rank sees the folder `path` that rank 0 sees: on several nodes,
    checkpoints and samples meet there, so it must be on a filesystem all nodes share. Rank 0 leaves a
    file in it; the others look for it for up to wait_seconds (NFS may cache a directory's listing)."""
    if not is_distributed():
        return
    rank = dist.get_rank()
    name = [f".shared-check-{socket.gethostname()}-{os.getpid()}"]
    dist.broadcast_object_list(name, src=0)
    probe = os.path.join(path, name[0])
    if rank == 0:
        open(probe, "w").close()
    dist.barrier()
    deadline = time.monotonic() + wait_seconds
    while not (os.path.isdir(path) and name[0] in os.listdir(path)) and time.monotonic() < deadline:
        time.sleep(1.0)
    seen = [False] * dist.get_world_size()
    dist.all_gather_object(seen, os.path.exists(probe))
    if rank == 0:
        os.remove(probe)
    blind = [other for other, found in enumerate(seen) if not found]
    if blind:
        raise UserError(f"ranks {blind} do not see {os.path.abspath(path)} as rank 0 ({socket.gethostname()}) "
                        "does: with several nodes it must be a folder on a filesystem every node shares (NFS, "
                        "Lustre...), the same path on each")


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself in one process)."""
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on at least one rank (a collective: every rank must call it)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def cleanup() -> None:
    """Leave the process group, all ranks together.

    The ranks meet over the rendezvous store first, not over the group itself: a gloo rank that closes its
    connections while a peer is still finishing the last collective can abort that peer ("terminate called
    without an active exception", pytorch/gloo#155; 5 of 180 two-process CPU runs with torch 2.14, none of
    180 with this meeting)."""
    if not is_distributed():
        return
    rank, world_size = dist.get_rank(), dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()
    store.set(f"arpg/cleanup/{rank}", "1")
    store.wait([f"arpg/cleanup/{other}" for other in range(world_size)])
    dist.destroy_process_group()

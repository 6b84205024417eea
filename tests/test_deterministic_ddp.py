"""--deterministic under DDP: gradients averaged in rank order, the same whatever DDP's bucket layout."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from autoregressive.train.parallel import rank_ordered_mean, wrap_for_training
from autoregressive.utils.dist import DistInfo

WORLD = 3  # three ranks: with two, a + b == b + a hides any order


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])


def local_gradients(rank: int):
    model = make_model()
    torch.manual_seed(100 + rank)  # every rank its own batch
    model(torch.randn(32, 64)).square().mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def ddp_gradients(rank: int, bucket_cap_mb: float):
    model = DistributedDataParallel(make_model(), bucket_cap_mb=bucket_cap_mb)
    model.register_comm_hook(None, rank_ordered_mean)
    torch.manual_seed(100 + rank)
    model(torch.randn(32, 64)).square().mean().backward()
    return [p.grad.clone() for p in model.module.parameters()]


def compare(rank: int):
    mine = local_gradients(rank)
    everyone = [[torch.empty_like(g) for _ in range(WORLD)] for g in mine]
    for gathered, grad in zip(everyone, mine):
        dist.all_gather(gathered, grad)
    expected = []
    for gathered in everyone:  # (g_0 + g_1 + g_2) / 3, in rank order
        total = gathered[0].clone()
        for part in gathered[1:]:
            total.add_(part)
        expected.append(total / WORLD)
    # 0.01 MB: a bucket per layer or two; 100 MB: one bucket
    results = {cap: ddp_gradients(rank, cap) for cap in (0.01, 100.0)}
    return {"expected": expected, "results": results}


def wrapped_hooks(rank: int):
    info = DistInfo(rank=rank, world_size=WORLD, local_rank=rank, device=torch.device("cpu"))
    return {flag: [hook.__name__ for hook, _ in wrap_for_training(
        make_model(), "ddp", info, compile_model=False, deterministic=flag)._comm_hooks] for flag in (False, True)}


def each_rank(rank: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    torch.save({**compare(rank), "hooks": wrapped_hooks(rank)}, os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """What each of the WORLD ranks saw, from one spawn that both tests read (starting the processes is
    most of the time)."""
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(each_rank, args=(str(out_dir),), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"{rank}.pt") for rank in range(WORLD)]


def test_ddp_gradients_are_the_rank_ordered_mean_for_any_bucket_layout(reports):
    for report in reports:
        for grads in report["results"].values():
            for got, want in zip(grads, report["expected"]):
                assert torch.equal(got, want)  # bitwise: the point is repeatability, not closeness
    for got, want in zip(reports[1]["results"][0.01], reports[0]["results"][0.01]):
        assert torch.equal(got, want)


def test_the_training_wrapper_averages_in_rank_order_only_when_deterministic(reports):
    """train_c2i.py --deterministic reaches DDP (the Trainer passes cfg.deterministic); the default keeps
    DDP's own all-reduce, the faster one."""
    assert reports[0]["hooks"] == {False: [], True: ["rank_ordered_mean"]}

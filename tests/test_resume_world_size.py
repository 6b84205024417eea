"""Resuming a training checkpoint on another number of processes (train/checkpoint.py resume_random_state)."""
import logging

import pytest
import torch

from autoregressive.train.checkpoint import (Progress, TrainingCheckpoint, convert_sharded_checkpoint,
                                             latest_checkpoint, resume_random_state, rng_state)
from autoregressive.train.loop import ResumableSampler
from test_train_c2i import DDP_RUN, FSDP_RUN, copy_run, finish, launch

CPU = torch.device("cpu")


def saved(world_size: int, global_batch_size: int = 8, step: int = 3) -> TrainingCheckpoint:
    torch.manual_seed(123)
    states = [rng_state(CPU)]
    for _ in range(world_size - 1):
        torch.rand(5)
        states.append(rng_state(CPU))
    config = {"global_batch_size": global_batch_size, "global_seed": 0}
    return TrainingCheckpoint(Progress(step=step), config, rng=states)


def test_the_same_world_size_continues_each_ranks_stream_exactly():
    checkpoint = saved(world_size=2)
    resume_random_state(checkpoint, "ckpt.pt", 8, rank=1, world_size=2, device=CPU)
    assert torch.equal(torch.get_rng_state(), checkpoint.rng[1]["cpu"])


def test_another_world_size_gets_fresh_per_rank_streams_and_one_warning(caplog, monkeypatch):
    # An in-process training run earlier in the session leaves "arpg.train" not propagating (get_logger):
    # listen on the logger itself, and only there.
    train_logger = logging.getLogger("arpg.train")
    monkeypatch.setattr(train_logger, "handlers", [*train_logger.handlers, caplog.handler])
    monkeypatch.setattr(train_logger, "propagate", False)  # heard once, whatever ran before
    draws = {}
    for rank in (0, 1):
        for step in (3, 4):
            with caplog.at_level("WARNING", logger="arpg.train"):
                resume_random_state(saved(world_size=4, step=step), "ckpt.pt", 8, rank=rank, world_size=2, device=CPU)
            draws[rank, step] = torch.rand(4)
    assert len({tuple(draw.tolist()) for draw in draws.values()}) == 4  # no two ranks or steps share a stream
    resume_random_state(saved(world_size=4, step=3), "ckpt.pt", 8, rank=1, world_size=2, device=CPU)
    assert torch.equal(torch.rand(4), draws[1, 3])  # yet reproducible
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2 and "saved by 4 processes and resumes on 2" in warnings[0]  # rank 0 only
    assert "statistically, not bitwise" in warnings[0]


def test_another_world_size_needs_the_same_global_batch():
    with pytest.raises(ValueError, match="saved by 4 processes at --global-batch-size 8; resume on 2 processes "
                                         "only with --global-batch-size 8.*or on 4 processes"):
        resume_random_state(saved(world_size=4), "ckpt.pt", 16, rank=0, world_size=2, device=CPU)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_data_position_is_the_same_at_any_world_size(accumulation):
    """What the samples of the optimizer steps after a resume at step 5 are, with the trainer's start
    formula: the same set per step at 1, 2 and 4 processes (global batch 8, 4 steps per epoch)."""
    dataset, global_batch, done = list(range(37)), 8, 1  # one step of epoch 3 done

    def steps_after_resume(world_size):
        micro = global_batch // (world_size * accumulation)
        shares = []
        for rank in range(world_size):
            sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0,
                                       drop_last=True)
            sampler.set_epoch(3)
            sampler.start = done * accumulation * micro  # as train/loop.py sets it
            shares.append(list(sampler))
        steps = len(shares[0]) // (accumulation * micro)
        return [sorted(i for share in shares for i in share[k * accumulation * micro:(k + 1) * accumulation * micro])
                for k in range(steps)]

    one = steps_after_resume(1)
    assert len(one) == 3 and steps_after_resume(2) == one and steps_after_resume(4) == one


def optimizer_steps(run_dir, tmp_path):
    """The Adam step count of every parameter in the run's last checkpoint (a file or a DCP folder)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = latest_checkpoint(str(run_dir))
    if not path.endswith(".pt"):
        dcp_to_torch_save(path, tmp_path / "dcp.pt")
        path = tmp_path / "dcp.pt"
    state = torch.load(path, weights_only=True)["optimizer"]["state"]
    return {int(entry["step"]) for entry in state.values()}


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_two_process_checkpoint_resumes_on_one_process(tmp_path, mode, finished_run):
    """Saved by 2 gloo processes at step 3, resumed by 1 to step 4: the optimizer state and the data
    position carry over (DDP: one file; FSDP: the DCP shards reshard), with the warning line."""
    extra = ["--data-parallel", mode]
    # 36 samples, global batch 8: 4 steps per epoch; the 2-process run shared with test_train_c2i, cut at step 3
    codes, finished, _ = finished_run(*(DDP_RUN if mode == "ddp" else FSDP_RUN))
    results = tmp_path / "results"
    copy_run(finished, results, last_step=3)
    output = finish(launch(codes, results, ["--max-steps", "4", "--resume", *extra], nproc_per_node=1))
    assert "saved by 2 processes and resumes on 1" in output and "resumed from" in output

    run_dir = results / "000-ARPG-tiny"
    path = latest_checkpoint(str(run_dir))
    state = torch.load(path if path.endswith(".pt") else f"{path}/trainer.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"], len(state["rng"])) == (4, 1, 0, 1)
    assert optimizer_steps(run_dir, tmp_path) == {4}  # a fresh optimizer would count 1
    if mode == "fsdp":  # and the resharded checkpoint still converts for sampling
        assert convert_sharded_checkpoint(path, str(tmp_path / "converted.pt")).progress.step == 4

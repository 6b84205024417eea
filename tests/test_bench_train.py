"""scripts/bench_train.py times the trainer's own optimizer step (here on the CPU, uncompiled), every
precision policy beside exact with interleaved repetitions."""
import argparse

import pytest
import torch
import torch.distributed as dist

from autoregressive.train.loop import Trainer
from autoregressive.train.precision import fp8_unavailable_reason, parse_policy_list
from autoregressive.utils.dist import init_distributed
from scripts import bench_train

ARGS = dict(steps=2, reps=2, no_compile=True, chunked_loss=True, grad_checkpointing="none", check_loss=True)


def count_steps(monkeypatch):
    """Record, for every optimizer step, its trainer's precision policy and micro-batch shapes."""
    calls, real_step = [], Trainer.optimizer_step

    def counted(trainer, batches):
        calls.append((trainer.cfg.precision_policy, [codes.shape for codes, _ in batches]))
        return real_step(trainer, batches)

    monkeypatch.setattr(Trainer, "optimizer_step", counted)
    return calls


def test_bench_times_the_trainer_step(monkeypatch):
    calls = count_steps(monkeypatch)
    [result] = bench_train.bench_group("ARPG-tiny", 2, "ddp", ["exact"], argparse.Namespace(**ARGS),
                                       init_distributed("cpu"))
    assert calls == [("exact", [torch.Size([2, 256])])] * (3 + 2 * 2)  # warm-up, then steps x reps, one micro-batch
    assert result["img_s"] > 0 and result["peak_gib"] is None and result["policy"] == "exact"
    # uncompiled on the CPU, the "compiled" loss is the eager one; a zero head would make all of them log V
    assert result["loss_compiled"] == result["loss_fp32"] != torch.log(torch.tensor(16384.0)).item()


def test_policies_are_timed_beside_exact_with_interleaved_repetitions(monkeypatch, tmp_path):
    calls = count_steps(monkeypatch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        policies = parse_policy_list("bf16,fp8")
        assert policies == ["exact", "bf16", "fp8"]
        results = bench_train.bench_group("ARPG-tiny", 2, "fsdp", policies, argparse.Namespace(**ARGS),
                                          init_distributed("cpu"))
    finally:
        dist.destroy_process_group()
    order = [policy for policy, _ in calls]
    assert order == ["exact"] * 3 + ["bf16"] * 3 + ["exact", "exact", "bf16", "bf16"] * 2  # warm-up, then reps
    exact, bf16, fp8 = results
    assert exact["img_s"] > 0 and bf16["img_s"] > 0 and "img_s" not in fp8
    assert fp8["skipped"] == fp8_unavailable_reason(torch.device("cpu"))  # no torchao, or no CUDA
    assert bf16["loss_compiled"] != exact["loss_compiled"]  # bf16 weights in the forward pass
    assert abs(bf16["loss_compiled"] - exact["loss_compiled"]) < 0.05


def test_policy_list_and_table():
    assert parse_policy_list("fp8,exact,fp8") == ["exact", "fp8"]
    with pytest.raises(ValueError, match="unknown precision policy fp4"):
        parse_policy_list("exact,fp4")
    assert bench_train.unavailable_reason("bf16", "ddp", torch.device("cpu")) is None  # Bf16Compute
    assert "needs --data-parallel fsdp" in bench_train.unavailable_reason("bf16", "ddp", torch.device("cpu"), "all")
    row = dict(model="ARPG-L", batch=128, mode="fsdp", flops=1e12, peak_gib=30.0)
    lines = bench_train.result_table([{**row, "policy": "exact", "img_s": 800.0},
                                      {**row, "policy": "bf16", "img_s": 1000.0},
                                      {**row, "policy": "fp8", "skipped": "needs a CUDA GPU (this run is on cpu)"}],
                                     peak=1000.0)
    assert lines[2] == "| ARPG-L | 128 | fsdp | exact | 800 | 1.00x | 30.0 | 80.0% |"
    assert lines[3] == "| ARPG-L | 128 | fsdp | bf16 | 1000 | 1.25x | 30.0 | 100.0% |"
    assert lines[4] == "| ARPG-L | 128 | fsdp | fp8 | not run: needs a CUDA GPU (this run is on cpu) | - | - | - |"

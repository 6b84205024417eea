"""scripts/bench_train.py times the trainer's own optimizer step (here on the CPU, uncompiled), every
precision policy beside exact with interleaved repetitions."""
import argparse
import functools

import pytest
import torch
import torch.distributed as dist

from autoregressive.train.config import TrainConfig
from autoregressive.train.loop import Trainer
from autoregressive.train.precision import fp8_unavailable_reason, parse_policy_list
from autoregressive.utils.dist import init_distributed
from scripts import bench_train

ARGS = dict(steps=2, reps=2, no_compile=True, chunked_loss=True, grad_checkpointing="none", check_loss=True,
            profile=None, one_at_a_time=False)


@pytest.fixture(autouse=True)
def small_vocabulary(monkeypatch):
    """ARPG-tiny with 512 codes: the 16384-way head is most of a tiny step's CPU time (bf16 the most)."""
    monkeypatch.setattr(bench_train, "TrainConfig", functools.partial(TrainConfig, vocab_size=512))


def count_steps(monkeypatch):
    """Record, for every optimizer step, its trainer's precision policy and micro-batch shapes."""
    calls, real_step = [], Trainer.optimizer_step

    def counted(trainer, batches):
        calls.append((trainer.cfg.precision_policy, [codes.shape for codes, _ in batches]))
        return real_step(trainer, batches)

    monkeypatch.setattr(Trainer, "optimizer_step", counted)
    return calls


def test_bench_times_the_trainer_step(monkeypatch, capsys):
    calls = count_steps(monkeypatch)
    [result] = bench_train.bench_group("ARPG-tiny", 2, "ddp", ["exact"], argparse.Namespace(**ARGS),
                                       init_distributed("cpu"))
    assert calls == [("exact", [torch.Size([2, 256])])] * (3 + 2 * 2)  # warm-up, then steps x reps, one micro-batch
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" in ")[0] for line in out if "warmed up" in line] == ["ARPG-tiny b2 exact: compiled and warmed up"]
    progress = [line for line in out if "repetition" in line]
    assert [line.split(": img/s exact ")[0] for line in progress] == [f"ARPG-tiny b2 ddp repetition {rep}"
                                                                      for rep in (1, 2)]
    assert result["img_s"] > 0 and result["peak_gib"] is None and result["policy"] == "exact"
    # uncompiled on the CPU, the "compiled" loss is the eager one; a zero head would make all of them log V
    assert result["loss_compiled"] == result["loss_fp32"] != torch.log(torch.tensor(512.0)).item()


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
    assert parse_policy_list("fp8,bf16,fp8", add_exact=False) == ["fp8", "bf16"]  # --one-at-a-time
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


def test_kernel_names_fall_into_kinds():
    from scripts.kernel_profile import kind_of

    assert kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert kind_of("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT") == "matmul"
    assert kind_of("flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "attention"
    assert kind_of("triton_poi_fused__to_copy_add_mul_0") == "fused (triton)"  # not a copy: a fused kernel
    assert kind_of("ncclDevKernel_AllReduce_Sum_f32_RING_LL") == "communication"
    assert kind_of("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert kind_of("Memcpy DtoD (Device -> Device)") == "copies and casts"
    assert kind_of("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add<float>>") == "other"


def test_profile_reports_where_the_step_time_goes(monkeypatch, tmp_path):
    """--profile: three more steps of each run under the profiler, a report per run whose kinds add up to
    the busy time (here CPU ops; on the GPU, kernels) with the matmuls among them."""
    calls = count_steps(monkeypatch)
    args = argparse.Namespace(**{**ARGS, "profile": str(tmp_path / "profile")})
    bench_train.bench_group("ARPG-tiny", 2, "ddp", ["exact"], args, init_distributed("cpu"))
    assert len(calls) == 3 + 2 * 2 + 3  # warm-up, timed repetitions, profiled
    text = (tmp_path / "profile" / "ARPG-tiny-b2-ddp-exact.md").read_text()
    assert text.startswith("### ARPG-tiny, batch 2, ddp, exact")
    kinds = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[2].endswith("%"):
            kinds[cells[0]] = (float(cells[1]), float(cells[2][:-1]))
    assert kinds["matmul"][0] > 0 and "attention" in kinds
    assert abs(sum(share for _, share in kinds.values()) - 100) < 1
    assert "| costliest CPU ops (self time) |" in text


def test_one_at_a_time_builds_times_and_frees_each_policy_in_turn(monkeypatch):
    calls = count_steps(monkeypatch)
    args = argparse.Namespace(**{**ARGS, "one_at_a_time": True, "check_loss": False, "steps": 1})
    results = bench_train.bench_group("ARPG-tiny", 2, "ddp", ["exact", "bf16"], args, init_distributed("cpu"))
    assert [policy for policy, _ in calls] == ["exact"] * (3 + 2) + ["bf16"] * (3 + 2)  # warm-up, 2 reps of 1 step
    assert [r["policy"] for r in results] == ["exact", "bf16"] and all(r["img_s"] > 0 for r in results)

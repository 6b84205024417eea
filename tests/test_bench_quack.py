"""scripts/bench_quack.py swaps quack's MLP and RMSNorm into our model and times each variant beside exact
with bench_train's machinery; here with stand-ins for quack's functions (plain torch, the same math) on the
CPU, since quack itself needs a Hopper GPU."""
import argparse
import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from autoregressive.models.arpg import ARPG_models, FeedForward, RMSNorm
from autoregressive.train.config import TrainConfig
from autoregressive.utils.cli import UserError
from autoregressive.utils.dist import init_distributed
from scripts import bench_quack, bench_train

ARGS = dict(steps=1, reps=2, no_compile=True, chunked_loss=False, grad_checkpointing="none", check_loss=True,
            profile=None, one_at_a_time=False, tuned=False)


class StandIn:
    """load_quack's MLP (quack_mlp.swiglu_mlp) and quack's rmsnorm in plain torch, counting their calls and
    checking what they are given."""

    def __init__(self):
        self.calls = {"mlp": 0, "norm": 0}

    def swiglu_mlp(self, x, w13, w2, tuned):
        assert w13.shape[0] == 2 * w2.shape[1]
        self.calls["mlp"] += 1
        gate, up = F.linear(x, w13).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w2)

    def rmsnorm(self, x, weight, eps, out_dtype):
        self.calls["norm"] += 1
        return (F.rms_norm(x, (x.shape[-1],), eps=eps) * weight).to(out_dtype)


@pytest.fixture(autouse=True)
def small_vocabulary(monkeypatch):
    monkeypatch.setattr(bench_train, "TrainConfig", functools.partial(TrainConfig, vocab_size=512))


def test_variants_are_parsed_and_bad_ones_refused():
    Variant = bench_quack.Variant
    assert bench_quack.parse_variants("exact,mlp,norm+mlp,bf16,mlp+bf16") == [
        Variant("exact", frozenset()), Variant("exact", {"mlp"}), Variant("exact", {"mlp", "norm"}),
        Variant("bf16", frozenset()), Variant("bf16", {"mlp"})]
    names = [bench_quack.variant_name(v) for v in bench_quack.parse_variants("exact,norm+mlp,mlp+bf16,exact+mlp")]
    assert names == ["exact", "mlp+norm", "bf16+mlp", "mlp"]
    for bad in ("mlp,loss", "exact,", "mlp+", "bf16+fp8", "bf16+exact+bf16", "fp8+mlp"):
        with pytest.raises(UserError, match="--variants"):
            bench_quack.parse_variants(bad)


@pytest.mark.parametrize("parts", [{"mlp"}, {"norm"}, {"mlp", "norm"}])
def test_swapped_modules_compute_what_ours_do(parts):
    torch.manual_seed(0)
    model = ARPG_models["ARPG-tiny"](vocab_size=64).eval()
    codes, labels = torch.randint(0, 64, (2, model.config.block_size)), torch.tensor([1, 2])
    orders = torch.rand(2, model.config.block_size).argsort(1)
    expected, _ = model(codes, labels, orders=orders)
    kernels = StandIn()
    changed = bench_quack.use_quack(model, frozenset(parts), kernels)
    ffns = sum(isinstance(m, FeedForward) for m in model.modules())
    norms = sum(isinstance(m, RMSNorm) for m in model.modules())
    assert changed == ffns * ("mlp" in parts) + norms * ("norm" in parts) > 0
    got, _ = model(codes, labels, orders=orders)
    assert torch.equal(got, expected)
    assert kernels.calls == {"mlp": ffns if "mlp" in parts else 0, "norm": norms if "norm" in parts else 0}


def test_variants_are_timed_beside_exact(capsys):
    kernels = StandIn()
    args = argparse.Namespace(**ARGS)
    results = bench_quack.run_variants("ARPG-tiny", 2, bench_quack.parse_variants("exact,mlp+norm"), args,
                                       init_distributed("cpu"), kernels)
    assert [r["side"] for r in results] == ["exact", "mlp+norm"]
    assert all(r["img_s"] > 0 for r in results)
    assert kernels.calls["mlp"] > 0 and kernels.calls["norm"] > 0  # the timed steps went through them
    # the stand-ins compute what ours do, so the swapped model's loss of the fixed batch is exact's
    assert results[1]["loss_compiled"] == results[0]["loss_compiled"] == results[0]["loss_fp32"]
    out = capsys.readouterr().out
    assert "ARPG-tiny b2 mlp+norm: compiled and warmed up" in out and "repetition 2" in out
    table = bench_train.result_table(results, peak=1.0, side_title="side (policy+quack's parts)")
    assert table[2].startswith("| ARPG-tiny | 2 | ddp | exact |") and "| 1.00x |" in table[2]
    assert table[3].startswith("| ARPG-tiny | 2 | ddp | mlp+norm |") and table[3].count("|") == table[0].count("|")
    losses = bench_train.loss_lines(results)  # eager float32 / bf16 once, then each side's compiled module
    assert [line.split(":")[0] for line in losses] == ["ARPG-tiny b2 ddp", "ARPG-tiny b2 ddp exact",
                                                       "ARPG-tiny b2 ddp mlp+norm"]


def test_one_at_a_time_builds_each_variant_alone(monkeypatch):
    groups = []
    real = bench_train.time_interleaved
    monkeypatch.setattr(bench_train, "time_interleaved",
                        lambda builders, *rest: groups.append(len(builders)) or real(builders, *rest))
    args = argparse.Namespace(**{**ARGS, "one_at_a_time": True, "check_loss": False})
    results = bench_quack.run_variants("ARPG-tiny", 2, bench_quack.parse_variants("exact,mlp"), args,
                                       init_distributed("cpu"), StandIn())
    assert groups == [1, 1] and [r["side"] for r in results] == ["exact", "mlp"]


def test_refusals_are_one_line(monkeypatch):
    with pytest.raises(UserError, match="--variants"):
        bench_quack.main(["--variants", "exact,fused"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            bench_quack.main([])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as if not installed
    with pytest.raises(UserError, match="pip install quack-kernels"):
        bench_quack.load_quack(torch.device("cuda", 0))


def test_a_variant_may_train_under_the_bf16_policy():
    kernels = StandIn()
    args = argparse.Namespace(**{**ARGS, "check_loss": False})
    results = bench_quack.run_variants("ARPG-tiny", 2, bench_quack.parse_variants("exact,bf16+mlp"), args,
                                       init_distributed("cpu"), kernels)
    assert [(r["policy"], r["side"]) for r in results] == [("exact", "exact"), ("bf16", "bf16+mlp")]
    assert all(r["img_s"] > 0 for r in results) and kernels.calls["mlp"] > 0

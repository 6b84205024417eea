"""--mlp-kernel quack (autoregressive/kernels/quack_mlp.py): the flag and its refusals, the call into quack,
the model's switch (training only), and a training run through it. quack needs a Hopper GPU, so a
plain-torch stand-in with quack's signature takes its place on the CPU."""
import importlib.util
import sys
import dataclasses
import types

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from autoregressive.kernels import quack_mlp
from autoregressive.models.arpg import FeedForward
from autoregressive.utils.cli import UserError
from conftest import build_tiny
from train_c2i import config_from_args, get_args_parser


def stand_in_mlp_func(calls):
    """quack.mlp.mlp_func's signature over plain torch: w13 holds the gate rows, then the up rows."""
    def mlp_func(x, weight1, weight2, activation, concat_layout=False, tuned=True):
        calls.append({"activation": activation, "concat_layout": concat_layout, "tuned": tuned})
        gate, up = F.linear(x, weight1).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, weight2)
    return mlp_func


@pytest.fixture
def stand_in_quack(monkeypatch):
    """A fake quack.mlp module in sys.modules; returns the list of its calls."""
    calls = []
    monkeypatch.setitem(sys.modules, "quack", types.ModuleType("quack"))
    monkeypatch.setitem(sys.modules, "quack.mlp", types.SimpleNamespace(mlp_func=stand_in_mlp_func(calls)))
    return calls


def test_the_call_asks_quack_for_a_swiglu_over_the_concatenated_weight(stand_in_quack):
    x, w13, w2 = torch.randn(3, 8), torch.randn(12, 8), torch.randn(8, 6)
    out = quack_mlp.swiglu_mlp(x, w13, w2)
    gate, up = x @ w13[:6].T, x @ w13[6:].T
    assert torch.allclose(out, (F.silu(gate) * up) @ w2.T, atol=1e-5)
    assert stand_in_quack == [{"activation": "swiglu", "concat_layout": True, "tuned": True}]


def test_the_model_uses_quack_in_training_only(stand_in_quack, monkeypatch):
    torch.manual_seed(0)
    model = build_tiny(mlp_kernel="quack")
    ffn = next(module for module in model.modules() if isinstance(module, FeedForward))
    x = torch.randn(2, 5, model.config.dim)
    evaluated = ffn(x)  # eval mode: FeedForward's own code
    assert stand_in_quack == []
    ffn.train()
    assert torch.allclose(ffn(x), evaluated, atol=1e-5) and len(stand_in_quack) == 1
    plain = build_tiny()  # the default: never quack, in training either
    plain.train()
    plain(torch.randint(0, 32, (2, 16)), torch.tensor([0, 1]), targets=torch.randint(0, 32, (2, 16)))
    assert len(stand_in_quack) == 1


@pytest.fixture
def gloo_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("policy, data_parallel, grad_checkpointing", [
    ("exact", "ddp", "none"), ("bf16", "ddp", "none"), ("bf16", "fsdp", "none"), ("exact", "fsdp", "all")])
def test_a_training_run_goes_through_quack_and_learns_what_the_torch_mlp_learns(
        stand_in_quack, monkeypatch, gloo_group, policy, data_parallel, grad_checkpointing):
    """The same seed and data with --mlp-kernel quack (its stand-in) and without: the same losses, since
    the stand-in computes what FeedForward does, under DDP and FSDP2 (whose unsharded weights quack
    reads), with the bf16 policy and with recomputed layers; every training forward of every MLP (and
    every recomputation of one) went through it."""
    from autoregressive.train.loop import Trainer
    from autoregressive.utils.dist import DistInfo
    from scripts.precision_check.data import PrototypeCodes
    from scripts.precision_check.run import policy_config

    monkeypatch.setattr(quack_mlp, "unavailable_reason", lambda device: None)
    args = types.SimpleNamespace(gpt_model="ARPG-tiny", vocab_size=32, num_classes=3, grid=4, batch_size=4, steps=3,
                                 lr=1e-3, warmup_steps=1, no_compile=True, device="cpu")
    dataset = PrototypeCodes(3, 4, 32, 0.25, 12, 0)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    losses = {}
    for kernel in ("torch", "quack"):
        cfg = dataclasses.replace(policy_config(args, policy, 0, kernel), data_parallel=data_parallel,
                                  grad_checkpointing=grad_checkpointing)
        assert cfg.mlp_kernel == kernel
        trainer = Trainer(cfg, info, dataset)
        losses[kernel] = [loss.item() for loss, _ in trainer.steps(3)]
    assert losses["quack"] == pytest.approx(losses["torch"], abs=1e-5 if policy == "exact" else 1e-3)
    passes = 2 if grad_checkpointing == "all" else 1  # the forward, and its recomputation in the backward
    mlps = sum(isinstance(module, FeedForward) for module in trainer.model.modules())
    assert mlps > 0 and len(stand_in_quack) == 3 * passes * mlps  # 3 steps, every layer's MLP


def test_the_flag_and_its_refusals():
    parse = lambda *extra: config_from_args(get_args_parser().parse_args(["--code-path", "x", *extra]))
    assert parse().mlp_kernel == "torch"
    assert parse("--mlp-kernel", "quack").mlp_kernel == "quack"
    with pytest.raises(UserError, match="use one of the two"):
        parse("--mlp-kernel", "quack", "--precision-policy", "fp8-rowwise")
    with pytest.raises(UserError, match="needs --mixed-precision bf16"):
        parse("--mlp-kernel", "quack", "--mixed-precision", "none")
    with pytest.raises(UserError, match="drop --deterministic or --mlp-kernel quack"):
        parse("--mlp-kernel", "quack", "--deterministic")
    with pytest.raises(ValueError, match="mlp_kernel must be one of torch, quack"):
        build_tiny(mlp_kernel="liger")


def test_where_quack_cannot_run_the_reason_says_what_to_do(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install quack-kernels" in quack_mlp.unavailable_reason(cuda)
    spec = types.SimpleNamespace(origin="/venv/lib/python3.12/site-packages/cutlass/__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert "CUDA GPU (this run is on cpu)" in quack_mlp.unavailable_reason(cpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 9))
    assert "9.0 or newer (Hopper" in quack_mlp.unavailable_reason(cuda) and "this one is 8.9" in quack_mlp.unavailable_reason(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert quack_mlp.unavailable_reason(cuda) is None
    spec.origin = "/tmp/qsite/nvidia_cutlass_dsl/python_packages/cutlass/__init__.py"  # pip install --target
    assert "outside a site-packages folder" in quack_mlp.unavailable_reason(cuda)
    assert quack_mlp.install_folder_problem("/usr/lib/python3/dist-packages/cutlass/__init__.py") is None


def test_a_run_that_cannot_use_quack_ends_with_one_line(tmp_path, capsys):
    """On this CPU (and without the package) --mlp-kernel quack stops before any training, with the reason."""
    import train_c2i
    from autoregressive.utils.cli import run_main
    from test_train_c2i import train_flags, write_codes

    codes, results = tmp_path / "codes", tmp_path / "results"
    write_codes(codes)
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_c2i.cli, train_flags(codes, results, ["--mlp-kernel", "quack"])[1:])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: --mlp-kernel quack needs")

"""Training precision policies (autoregressive/train/precision.py): flag and config checks, the fp8
refusals and layer choice (fp8 numerics need torchao on an sm89+ GPU), and the bf16 policy under FSDP2
on one gloo process: bf16 compute, float32 master weights and AdamW state, strictly loading checkpoints."""
import importlib.util
import sys
import types

import pytest
import torch
import torch.distributed as dist

from autoregressive.models.arpg import ARPG_models
from autoregressive.train import precision
from autoregressive.train.config import TrainConfig
from autoregressive.train.precision import check_policy, converts_to_float8, fp8_unavailable_reason, prepare_model
from conftest import TINY, build_tiny
from train_c2i import config_from_args, get_args_parser


def test_the_flag_defaults_to_exact_and_bf16_recomputes_only_under_fsdp():
    parse = lambda *extra: config_from_args(get_args_parser().parse_args(["--code-path", "x", *extra]))
    assert parse().precision_policy == "exact"
    assert parse("--precision-policy", "bf16", "--data-parallel", "fsdp").precision_policy == "bf16"
    assert parse("--precision-policy", "bf16").precision_policy == "bf16"  # DDP: Bf16Compute
    assert parse("--precision-policy", "bf16", "--data-parallel", "fsdp", "--grad-checkpointing").grad_checkpointing
    assert parse("--precision-policy", "fp8").precision_policy == "fp8"
    with pytest.raises(ValueError, match="with --grad-checkpointing needs --data-parallel fsdp"):
        parse("--precision-policy", "bf16", "--grad-checkpointing", "self")
    with pytest.raises(ValueError, match="exact, bf16, fp8"):
        check_policy("fp4", "ddp")


def test_fp8_is_refused_with_the_reason(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install torchao" in fp8_unavailable_reason(cuda)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert "CUDA GPU (this run is on cpu)" in fp8_unavailable_reason(cpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    assert "8.9 or newer" in fp8_unavailable_reason(cuda) and "this one is 8.0" in fp8_unavailable_reason(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert fp8_unavailable_reason(cuda) is None
    with pytest.raises(ValueError, match="--precision-policy fp8 needs a CUDA GPU"):
        prepare_model(build_tiny(), "fp8", cpu)


def test_exact_and_bf16_leave_the_module_itself_alone():
    model = build_tiny()
    before = {name: p.clone() for name, p in model.named_parameters()}
    for policy in ("exact", "bf16"):
        assert prepare_model(model, policy, torch.device("cpu")) is model
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert precision.fsdp_mixed_precision("exact") is None and precision.fsdp_mixed_precision("fp8") is None


def test_fp8_converts_every_decoder_linear_of_arpg_l_but_not_the_head_or_small_layers():
    with torch.device("meta"):
        large, tiny = ARPG_models["ARPG-L"](), build_tiny()
    chosen = [name for name, module in large.named_modules() if converts_to_float8(module, name)]
    linears = [name for name, module in large.named_modules() if isinstance(module, torch.nn.Linear)]
    assert chosen == [name for name in linears if name != "head"] and len(chosen) == 4 * 24 + 1  # + shared to_kv
    assert not any(converts_to_float8(module, name) for name, module in tiny.named_modules())
    assert not converts_to_float8(torch.nn.Linear(1024, 1000), "odd")  # 1000 is not a multiple of 16
    assert not converts_to_float8(torch.nn.LayerNorm(2048), "norm")


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(code_path="", gpt_model="ARPG-tiny", vocab_size=TINY["vocab_size"], num_classes=TINY["num_classes"],
                    image_size=4, downsample_size=1, global_batch_size=4, compile=False, num_workers=0, device="cpu",
                    results_dir=str(tmp_path), data_parallel="fsdp", ema=True, lr=1e-3)
    return TrainConfig(**{**settings, **overrides})


def test_bf16_computes_in_bf16_over_float32_master_weights_and_saves_an_exact_checkpoint(tmp_path, one_process_group):
    from autoregressive.train.checkpoint import convert_sharded_checkpoint
    from autoregressive.train.loop import Trainer
    from autoregressive.utils.dist import init_distributed
    from autoregressive.weights import load_model_weights

    torch.manual_seed(0)
    codes = torch.randint(0, TINY["vocab_size"], (4, 16))
    labels = torch.arange(4) % TINY["num_classes"]
    dataset = torch.utils.data.TensorDataset(codes, labels)
    trainer = Trainer(tiny_config(tmp_path, precision_policy="bf16"), init_distributed("cpu"), dataset)
    seen = []
    trainer.model.layers.cross_dec[0].ffn.w2.register_forward_hook(
        lambda module, inputs, output: seen.append((module.weight.dtype, inputs[0].dtype)))
    losses = [trainer.optimizer_step([(codes, labels)]).item() for _ in range(3)]
    assert seen == [(torch.bfloat16, torch.bfloat16)] * 3  # bf16 weights and hidden states in the pass
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # the sharded master weights
    state = trainer.optimizer.state_dict()["state"]
    assert {s["exp_avg"].dtype for s in state.values()} == {torch.float32}
    assert losses[-1] < losses[0]

    path = trainer.save(str(tmp_path / "run"))
    convert_sharded_checkpoint(path, str(tmp_path / "converted.pt"))
    exact = ARPG_models["ARPG-tiny"](**TINY)
    for weights in ("model", "ema"):
        load_model_weights(exact, str(tmp_path / "converted.pt"), weights=weights)  # strict
        assert {p.dtype for p in exact.parameters()} == {torch.float32}
    master = trainer.model.state_dict()["head.weight"].full_tensor()
    assert torch.equal(load_model_weights(exact, str(tmp_path / "converted.pt"), weights="model").head.weight, master)


def test_fp8_conversion_keeps_the_exact_models_names_and_float32_weights():
    """With torchao installed (skipped without it): the fp8 conversion, emulated on the CPU, swaps the
    chosen layers only, and its state dict loads strictly into the exact model."""
    float8 = pytest.importorskip("torchao.float8")
    wide = dict(TINY, dim=1024, n_head=16, multiple_of=256)
    torch.manual_seed(0)
    model, exact = ARPG_models["ARPG-tiny"](**wide), ARPG_models["ARPG-tiny"](**wide)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    exact.load_state_dict(model.state_dict())
    float8.convert_to_float8_training(model, module_filter_fn=converts_to_float8,
                                      config=float8.Float8LinearConfig(emulate=True))
    converted = [name for name, module in model.named_modules() if type(module).__name__ == "Float8Linear"]
    assert len(converted) == 4 * 4 + 1 and "head" not in converted  # 4 layers x 4 Linears + the shared to_kv
    state = model.state_dict()
    assert list(state) == list(exact.state_dict()) and {value.dtype for value in state.values()} == {torch.float32}
    exact.load_state_dict(state, strict=True)
    codes, labels = torch.randint(0, TINY["vocab_size"], (2, 16)), torch.tensor([1, 2])
    orders = torch.rand(2, 16).argsort(1)
    with torch.no_grad():
        fp8_loss = model.eval()(codes, labels, targets=codes, orders=orders)[1]
        exact_loss = exact.eval()(codes, labels, targets=codes, orders=orders)[1]
    assert fp8_loss != exact_loss and abs(fp8_loss - exact_loss) < 0.1


def test_sharding_builds_its_mesh_on_the_runs_device(one_process_group, monkeypatch):
    """FSDP's default mesh is CUDA whenever a GPU is visible, which moved a CPU run's model there (seen on
    the H100): shard_model must hand every fully_shard call a mesh of the run's own device type."""
    from autoregressive.train import parallel

    real, meshes = parallel._fully_shard(), []

    def recording_fully_shard(module, **options):
        meshes.append(options.get("mesh"))
        return real(module, **options)

    monkeypatch.setattr(parallel, "_fully_shard", lambda: recording_fully_shard)
    model = ARPG_models["ARPG-tiny"](**TINY)
    parallel.shard_model(model, torch.device("cpu"))
    assert len(meshes) == len(parallel.decoder_layers(model)) + 1
    assert all(mesh is not None and mesh.device_type == "cpu" for mesh in meshes)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_bf16_without_fsdp_trains_what_fsdp_bf16_trains_over_float32_master_weights(tmp_path, one_process_group):
    """Bf16Compute (the bf16 policy under DDP or one process): bf16 weights and hidden states in the pass,
    float32 gradients, master weights and AdamW state, a checkpoint that loads strictly into the exact
    model, and the losses of FSDP's MixedPrecisionPolicy on the same data (one gloo process)."""
    from autoregressive.train.loop import Trainer
    from autoregressive.utils.dist import init_distributed
    from autoregressive.weights import load_model_weights

    torch.manual_seed(0)
    codes = torch.randint(0, TINY["vocab_size"], (4, 16))
    labels = torch.arange(4) % TINY["num_classes"]
    dataset = torch.utils.data.TensorDataset(codes, labels)
    losses = {}
    for mode in ("ddp", "fsdp"):
        torch.manual_seed(1)
        trainer = Trainer(tiny_config(tmp_path / mode, precision_policy="bf16", data_parallel=mode, ema=False),
                          init_distributed("cpu"), dataset)
        seen = []
        trainer.model.layers.cross_dec[0].ffn.w2.register_forward_hook(
            lambda module, inputs, output: seen.append((module.weight.dtype, inputs[0].dtype)))
        losses[mode] = [trainer.optimizer_step([(codes, labels)]).item() for _ in range(3)]
        assert seen == [(torch.bfloat16, torch.bfloat16)] * 3
        assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
        assert {s["exp_avg"].dtype for s in trainer.optimizer.state_dict()["state"].values()} == {torch.float32}
        if mode == "ddp":
            assert isinstance(trainer.train_model, precision.Bf16Compute)
            assert {p.grad.dtype for p in trainer.model.parameters() if p.grad is not None} <= {torch.float32}
            load_model_weights(ARPG_models["ARPG-tiny"](**TINY), trainer.save(str(tmp_path / "run")))  # strict
    assert losses["ddp"][-1] < losses["ddp"][0]
    assert losses["ddp"] == pytest.approx(losses["fsdp"], rel=1e-3)


def test_fp8_rowwise_converts_with_torchaos_rowwise_recipe(monkeypatch):
    """fp8 keeps torchao's default (tensor-wise) config; fp8-rowwise asks for its "rowwise" recipe."""
    seen = []
    fake = types.ModuleType("torchao.float8")
    fake.Float8LinearConfig = types.SimpleNamespace(from_recipe_name=lambda name: f"recipe {name}")
    fake.convert_to_float8_training = lambda model, module_filter_fn, config: seen.append(config) or model
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="--precision-policy fp8-rowwise needs"):
        prepare_model(build_tiny(), "fp8-rowwise", cpu)  # no CUDA here (or no torchao)
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.float8", fake)
    monkeypatch.setattr(precision, "fp8_unavailable_reason", lambda device: None)
    for policy in ("fp8", "fp8-rowwise"):
        prepare_model(build_tiny(), policy, cpu)
    assert seen == [None, "recipe rowwise"]

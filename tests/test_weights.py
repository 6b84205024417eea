import argparse

import pytest
import torch
from safetensors.torch import save_file

from autoregressive.models.arpg import ARPG_models
from autoregressive.utils.cli import UserError
from autoregressive.weights import load_model_weights
from conftest import TINY, build_tiny


@pytest.mark.parametrize("layout", ["bare", "model", "ema", "module", "state_dict", "ddp-prefixed"])
def test_loads_every_official_layout(tmp_path, layout):
    source = build_tiny(seed=1)
    state = source.state_dict()
    if layout == "ddp-prefixed":
        payload = {"model": {f"module._orig_mod.{k}": v for k, v in state.items()}}
    else:
        payload = state if layout == "bare" else {layout: state, "steps": 10}
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    target = load_model_weights(build_tiny(seed=2), str(path))
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), state.values()))


def test_loads_checkpoints_carrying_argparse_args_and_safetensors(tmp_path):
    source = build_tiny(seed=1)
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "official.pt")
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("official.pt", "w.safetensors"):
        target = load_model_weights(build_tiny(seed=2), str(tmp_path / name))
        assert torch.equal(target.head.weight, source.head.weight)


def test_checkpoints_are_memory_mapped_and_old_format_files_read_whole(tmp_path, monkeypatch):
    """A training checkpoint's optimizer state is never read for sampling: the file is mapped and only the
    tensors used are paged in. Files of the pre-1.6 format cannot be mapped and still load, read whole."""
    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, **kwargs: loads.append(kwargs.get("mmap", False)) or
                        real_load(path, **kwargs))
    source = build_tiny(seed=1)
    payload = {"model": source.state_dict(), "optimizer": {"state": {0: {"exp_avg": torch.zeros(1000)}}}}
    torch.save(payload, tmp_path / "train.pt")
    torch.save(payload, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name, tries in (("train.pt", [True]), ("legacy.pt", [True, False])):
        loads.clear()
        target = load_model_weights(build_tiny(seed=2), str(tmp_path / name))
        assert torch.equal(target.head.weight, source.head.weight) and loads == tries, name


def test_wrong_size_names_the_keys_and_the_size(tmp_path):
    with torch.device("meta"):
        xl_keys = ARPG_models["ARPG-XL"]().state_dict()
    fake_xl = {k: torch.zeros(v.shape[:1] + (1,) * (v.ndim - 1)) for k, v in xl_keys.items()}
    fake_xl["embeddings.weight"] = torch.zeros(17387, 1280)
    path = tmp_path / "xl.pt"
    torch.save({"model": fake_xl}, path)
    with pytest.raises(ValueError) as error:
        load_model_weights(build_tiny(), str(path))
    message = str(error.value)
    assert "256 unexpected keys" in message and "layers.cross_dec.10" in message
    assert "ARPG-XL (36 layers, dim 1280); pass --gpt-model ARPG-XL" in message
    assert "embeddings.weight: checkpoint (17387, 1280), model (40, 64)" in message


def test_corrupt_and_missing_files_are_explained(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save({"model": build_tiny().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or incomplete"):
        load_model_weights(build_tiny(), str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model_weights(build_tiny(), str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_model_weights(build_tiny(), str(tmp_path / "junk.pt"))


def test_fused_projections_keep_official_names():
    model = build_tiny(seed=3)
    state = model.state_dict()
    qkv = model.layers.self_dec[0].attn.qkv.weight
    assert torch.equal(state["layers.self_dec.0.attn.to_k.weight"], qkv[64:128])
    assert torch.equal(state["layers.cross_dec.1.ffn.w3.weight"], model.layers.cross_dec[1].ffn.w13.weight[192:])
    assert torch.equal(state["layers.to_v.weight"], model.layers.to_kv.weight[64:])
    fresh = build_tiny(seed=4)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.layers.self_dec[0].attn.qkv.weight, qkv)


def two_models():
    return build_tiny(seed=1).state_dict(), build_tiny(seed=3).state_dict()


@pytest.mark.parametrize("weights,expected", [(None, "ema"), ("ema", "ema"), ("model", "model")])
def test_a_file_with_both_gives_ema_unless_model_is_asked_for(tmp_path, capsys, weights, expected):
    raw, ema = two_models()
    path = tmp_path / "both.pt"
    torch.save({"model": raw, "ema": ema, "step": 9}, path)
    target = load_model_weights(build_tiny(seed=2), str(path), weights)
    wanted = {"ema": ema, "model": raw}[expected]
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), wanted.values()))
    assert f"loaded the {'EMA' if expected == 'ema' else 'raw model'} weights of {path}" in capsys.readouterr().out


@pytest.mark.parametrize("payload", ["model_only", "released", "bare"])
def test_a_file_without_ema_gives_the_model_and_refuses_ema(tmp_path, payload):
    from autoregressive.weights import select_state_dict

    raw, _ = two_models()
    checkpoint = {"model_only": {"model": raw, "step": 3},
                  "released": {"model": raw, "args": argparse.Namespace(lr=1e-4)},  # arpg_300m.pt's layout
                  "bare": raw}[payload]
    path = tmp_path / "raw.pt"
    torch.save(checkpoint, path)
    for weights in (None, "model"):
        target = load_model_weights(build_tiny(seed=2), str(path), weights)
        assert torch.equal(target.head.weight, raw["head.weight"])
    with pytest.raises(ValueError, match="holds no EMA weights.*pass --weights model"):
        load_model_weights(build_tiny(seed=2), str(path), "ema")
    assert select_state_dict(checkpoint)[0] == "model"


def test_an_ema_only_file_refuses_model_and_unknown_choices(tmp_path):
    from autoregressive.weights import select_state_dict

    _, ema = two_models()
    assert select_state_dict({"ema": ema})[0] == "ema"
    with pytest.raises(ValueError, match="EMA weights only; pass --weights ema"):
        select_state_dict({"ema": ema}, "model")
    with pytest.raises(ValueError, match="--weights must be one of"):
        select_state_dict({"ema": ema}, "average")


class Loaded(Exception):
    """Stops a sampler's main right after it asked for the weights."""


@pytest.mark.parametrize("script,extra", [("sample_c2i", ["--vq-ckpt", "vq.pt"]), ("sample_c2i_ddp", ["--vq-ckpt", "vq.pt"]),
                                          ("edit_c2i", ["--gpt-model", "ARPG-digits", "--task", "inpaint", "--digit-index", "3",
                                                        "--shape", "center"])])
def test_the_samplers_pass_weights_to_the_loader(monkeypatch, tmp_path, script, extra):
    import importlib

    from autoregressive import model_args

    module = importlib.import_module(script)
    monkeypatch.chdir(tmp_path)
    for name in ("x.pt", "vq.pt"):  # the samplers refuse missing files before loading anything
        (tmp_path / name).write_bytes(b"never read: load_gpt is replaced")

    def load_gpt(name, ckpt, device, precision, weights=None, **overrides):
        raise Loaded(weights)

    monkeypatch.setattr(model_args, "load_gpt", load_gpt)  # every sampler loads through model_from_args
    for flag, expected in (([], None), (["--weights", "model"], "model"), (["--weights", "ema"], "ema")):
        args = module.get_args_parser().parse_args(["--gpt-ckpt", "x.pt", "--device", "cpu", *extra, *flag])
        with pytest.raises(Loaded) as loaded:
            module.main(args)
        assert loaded.value.args == (expected,)


def test_load_gpt_takes_the_chosen_weights(tmp_path):
    from autoregressive.weights import load_gpt

    raw, ema = two_models()
    path = tmp_path / "both.pt"
    torch.save({"model": raw, "ema": ema}, path)
    for weights, wanted in ((None, ema), ("model", raw)):
        model = load_gpt("ARPG-tiny", str(path), "cpu", "none", weights, vocab_size=32, num_classes=5, block_size=16)
        assert torch.equal(model.head.weight, wanted["head.weight"])


def test_a_model_built_from_a_checkpoint_draws_no_random_weights_and_samples_as_a_copied_one(tmp_path):
    """load_gpt and load_vq build on the meta device and take the file's tensors: the CPU generator is
    not advanced by an initialisation the checkpoint would overwrite, nothing stays on the meta device
    (the RoPE table included), and the model samples the tokens of a model the weights were copied into."""
    from autoregressive.generate import generate
    from autoregressive.weights import load_gpt, load_vq
    from tokenizer.vq_model import VQ_models

    source = build_tiny(seed=1)
    path = tmp_path / "arpg.pt"
    torch.save({"model": source.state_dict()}, path)
    before = torch.get_rng_state()
    model = load_gpt("ARPG-tiny", str(path), "cpu", "none", **TINY)
    assert torch.equal(torch.get_rng_state(), before)
    tensors = [*model.parameters(), *model.buffers(), model.rope_cpu]
    assert not any(tensor.is_meta for tensor in tensors) and not model.training
    copied = load_model_weights(build_tiny(seed=2), str(path))
    labels = torch.tensor([0, 3])
    tokens = [generate(m, labels, num_steps=4, generator=torch.Generator().manual_seed(0)) for m in (model, copied)]
    assert torch.equal(tokens[0], tokens[1])

    vq_path = tmp_path / "vq.pt"
    vq_state = VQ_models["VQ-16"]().state_dict()
    torch.save({"model": vq_state}, vq_path)
    before = torch.get_rng_state()
    vq = load_vq("VQ-16", str(vq_path), "cpu")
    assert torch.equal(torch.get_rng_state(), before)
    assert not any(tensor.is_meta for tensor in [*vq.parameters(), *vq.buffers()])
    assert torch.equal(vq.decoder.conv_in.weight, vq_state["decoder.conv_in.weight"])

    strided = {**source.state_dict(), "head.weight": source.head.weight.detach().t().contiguous().t()}
    torch.save({"model": strided}, path)
    assert load_gpt("ARPG-tiny", str(path), "cpu", "none", **TINY).head.weight.is_contiguous()  # as a copy was
    torch.save({"model": {k: v for k, v in source.state_dict().items() if k != "head.weight"}}, path)
    with pytest.raises(UserError, match="1 missing keys: head.weight"):
        load_gpt("ARPG-tiny", str(path), "cpu", "none", **TINY)

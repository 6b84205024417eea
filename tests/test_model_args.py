"""The model flags, declared once (autoregressive/model_args.py), build the same model in every script."""
import argparse
import pathlib

import pytest
import torch

import edit_c2i
import sample_c2i
import sample_c2i_ddp
from autoregressive.model_args import add_model_args, model_from_args
from autoregressive.sampling import SamplingConfig
from autoregressive.utils.cli import UserError
from conftest import TINY, build_tiny
from scripts import sweep_cfg

MODEL_FLAGS = {"--gpt-model", "--gpt-ckpt", "--weights", "--precision", "--vq-model", "--vq-ckpt"}
SCRIPTS = [sample_c2i, sample_c2i_ddp, edit_c2i, sweep_cfg]


@pytest.fixture
def tiny_ckpt(tmp_path):
    model = build_tiny(seed=3)
    path = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path), model


def flags_of(parser):
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_sampling_script_takes_the_model_flags_and_the_sampling_flags():
    for script in SCRIPTS:
        flags = flags_of(script.get_args_parser())
        assert MODEL_FLAGS <= flags, script.__name__
        assert {"--kv-cache", "--step", "--temperature"} <= flags, script.__name__


def test_no_script_declares_a_model_flag_itself():
    root = pathlib.Path(__file__).resolve().parent.parent
    for name in ("sample_c2i.py", "sample_c2i_ddp.py", "edit_c2i.py", "scripts/sweep_cfg.py", "evaluations/digits.py",
                 "scripts/eval_digits_editing.py"):
        text = (root / name).read_text()
        for flag in MODEL_FLAGS | {"--codebook-size", "--num-classes", "--cls-token-num"}:
            assert f'add_argument("{flag}"' not in text, (name, flag)


def test_model_from_args_loads_the_file_with_the_overrides_and_dtype(tiny_ckpt):
    path, trained = tiny_ckpt
    parser = add_model_args(argparse.ArgumentParser())
    args = parser.parse_args(["--gpt-model", "ARPG-tiny", "--gpt-ckpt", path, "--codebook-size", str(TINY["vocab_size"]),
                              "--num-classes", str(TINY["num_classes"]), "--image-size", "64", "--precision", "bf16"])
    model, vq = model_from_args(args, "cpu")
    assert vq is None and model.config.block_size == TINY["block_size"] and model.config.num_classes == 5
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.head.weight, trained.head.weight.to(torch.bfloat16))


def test_a_model_without_released_weights_needs_gpt_ckpt():
    args = add_model_args(argparse.ArgumentParser(), gpt_model="ARPG-digits", vq=False, sizes=False).parse_args([])
    with pytest.raises(UserError, match="--gpt-ckpt is required"):
        model_from_args(args, "cpu")


def test_the_sweep_reads_the_sampling_flags_around_its_swept_scale():
    args = sweep_cfg.get_args_parser().parse_args(["--gpt-model", "ARPG-digits", "--gpt-ckpt", "x.pt", "--kv-cache",
                                                   "int8", "--step", "8", "--weights", "model"])
    config = SamplingConfig.from_args(args, cfg_scale=3.0, cfg_schedule="constant")
    assert (config.kv_cache, config.num_steps, config.cfg_scale, args.weights) == ("int8", 8, 3.0, "model")
    assert "--cfg-scale" not in flags_of(sweep_cfg.get_args_parser())


def test_the_old_fused_flag_sets_compile_layers_with_a_note(capsys):
    for script in (sample_c2i, sample_c2i_ddp):
        parser = script.get_args_parser()
        assert parser.parse_args([]).compile_layers is False
        assert parser.parse_args(["--fused"]).compile_layers is True
        assert "--fused is now --compile-layers" in capsys.readouterr().err
        assert "--fused" not in parser.format_help()  # hidden: --help shows the new name only

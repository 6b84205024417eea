"""The sampling flags are declared once (add_sampling_args) and read back once (SamplingConfig.from_args)."""
import argparse
import dataclasses

import pytest

from autoregressive.sampling import CFG_SCHEDULES, KV_CACHE_DTYPES, SAMPLE_SCHEDULES, SamplingConfig, add_sampling_args
from autoregressive.utils.cli import UserError

OFFICIAL_DDP = ["--gpt-model", "ARPG-L", "--gpt-ckpt", "arpg_300m.pt", "--vq-ckpt", "vq_ds16_c2i.pt",
                "--sample-schedule", "arccos", "--cfg-scale", "6.0", "--step", "64"]


def parsed(parser, argv):
    return SamplingConfig.from_args(parser.parse_args(argv))


def test_flags_round_trip_every_field_and_take_defaults_by_field_name():
    parser = add_sampling_args(argparse.ArgumentParser(), num_steps=16, cfg_scale=2.0)
    assert parsed(parser, []) == SamplingConfig(num_steps=16, cfg_scale=2.0)
    argv = ["--step", "8", "--cfg-scale", "1.5", "--cfg-schedule", "constant", "--sample-schedule", "cosine",
            "--temperature", "0.5", "--top-k", "3", "--top-p", "0.9", "--kv-cache", "fp8"]
    expected = SamplingConfig(8, 1.5, "constant", "cosine", 0.5, 3, 0.9, "fp8")
    assert parsed(parser, argv) == expected
    assert {field.name for field in dataclasses.fields(SamplingConfig)} == set(dataclasses.asdict(expected))
    with pytest.raises(TypeError, match="unknown sampling defaults"):
        add_sampling_args(argparse.ArgumentParser(), steps=16)


def test_schedule_choices_come_from_the_tables(capsys):
    parser = add_sampling_args(argparse.ArgumentParser())
    choices = {action.dest: action.choices for action in parser._actions if action.choices}
    assert choices == {"cfg_schedule": CFG_SCHEDULES, "sample_schedule": SAMPLE_SCHEDULES, "kv_cache": ("weights", "int8", "fp8")}
    with pytest.raises(SystemExit):
        parser.parse_args(["--sample-schedule", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"unknown KV cache 'fp4' \(--kv-cache\); choose one of \('weights', 'int8', 'fp8'\)"):
        SamplingConfig(kv_cache="fp4")  # the Python API: model.generate(..., kv_cache="fp4")


def test_every_sampling_script_takes_the_kv_cache_flag():
    """--kv-cache comes with add_sampling_args, so the sampling scripts take it without their own code."""
    import edit_c2i
    import sample_c2i
    import sample_c2i_ddp

    assert parsed(sample_c2i_ddp.get_args_parser(), ["--gpt-ckpt", "x.pt", "--kv-cache", "fp8"]).kv_cache == "fp8"
    assert parsed(sample_c2i.get_args_parser(), ["--gpt-ckpt", "x.pt", "--kv-cache", "fp8"]).kv_cache == "fp8"
    edit = ["--task", "inpaint", "--gpt-ckpt", "x.pt", "--digit-index", "0", "--kv-cache", "fp8"]
    assert parsed(edit_c2i.get_args_parser(), edit).kv_cache == "fp8"


def test_every_sampling_script_keeps_its_defaults():
    import edit_c2i
    import sample_c2i
    import sample_c2i_ddp

    assert parsed(sample_c2i.get_args_parser(), ["--gpt-ckpt", "x.pt"]) == SamplingConfig()
    assert parsed(edit_c2i.get_args_parser(), ["--task", "inpaint", "--gpt-ckpt", "x.pt", "--digit-index", "0"]) \
        == SamplingConfig(num_steps=16)
    ddp = sample_c2i_ddp.get_args_parser()
    assert parsed(ddp, ["--gpt-ckpt", "x.pt"]) == SamplingConfig(num_steps=256, cfg_scale=2.0)  # official defaults
    assert parsed(ddp, OFFICIAL_DDP) == SamplingConfig(num_steps=64, cfg_scale=6.0)


def test_ddp_compatibility_flags_are_accepted_and_said_to_be_ignored():
    import sample_c2i_ddp

    parser = sample_c2i_ddp.get_args_parser()
    args = parser.parse_args(OFFICIAL_DDP + ["--gpt-type", "c2i", "--from-fsdp", "--codebook-embed-dim", "8"])
    assert args.from_fsdp and args.codebook_embed_dim == 8
    [group] = [group for group in parser._action_groups if group.title == "compatibility"]
    assert "ignored" in group.description
    assert {action.dest for action in group._group_actions} == {"gpt_type", "from_fsdp", "codebook_embed_dim"}
    assert "CUDA graphs" in next(action.help for action in parser._actions if action.dest == "compile")


def test_every_cache_list_derives_from_the_code_dtype_table():
    from autoregressive.kernels.codes import KV_CODES
    from scripts import check_precision
    from scripts.bench_common import parse_kv_caches

    assert tuple(KV_CACHE_DTYPES) == ("weights", *KV_CODES)
    assert {f"{kind}-kv" for kind in KV_CODES} <= set(check_precision.SAMPLING_MODES)
    assert parse_kv_caches(",".join(KV_CODES)) == ("weights", *KV_CODES)
    assert {kind: code.code_max for kind, code in KV_CODES.items()} == {"int8": 127.0, "fp8": 448.0}


def test_the_old_kv_cache_name_still_works_with_a_note(capsys):
    parser = add_sampling_args(argparse.ArgumentParser())
    assert SamplingConfig.from_args(parser.parse_args(["--kv-cache", "model"])).kv_cache == "weights"
    assert SamplingConfig(kv_cache="model") == SamplingConfig()
    from scripts.bench_common import parse_kv_caches

    assert parse_kv_caches("model,int8") == ("weights", "int8")
    assert capsys.readouterr().err.count("is now") == 3

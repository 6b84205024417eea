"""train_c2i.py's flags come from TrainConfig's fields: defaults, types and the config built back."""
import dataclasses

import pytest

import train_c2i
from autoregressive.train.config import TrainConfig, add_train_args, field_flags, train_config_from_args


def parse(*argv):
    return train_c2i.get_args_parser().parse_args(["--code-path", "codes", *argv])


def test_no_flags_give_the_dataclass_defaults():
    assert train_config_from_args(parse()) == TrainConfig(code_path="codes")


def test_every_field_has_a_flag_except_those_set_in_code():
    without_flag = {f.name for f in dataclasses.fields(TrainConfig) if not field_flags(f)}
    assert without_flag == {"ema_decay", "condition_vocab_size"}  # EMA decay is fixed; the vocabulary is read


@pytest.mark.parametrize("argv, field, value", [
    (["--beta1", "0.8"], "betas", [0.8, 0.95]),
    (["--beta2", "0.9"], "betas", [0.9, 0.9]),
    (["--no-compile"], "compile", False),
    (["--gpt-ckpt", "run/0000100.pt"], "resume", "run/0000100.pt"),
    (["--resume"], "resume", "latest"),
    (["--condition-dropout-p", "0.3"], "condition_dropout_prob", 0.3),
    (["--grad-checkpointing"], "grad_checkpointing", "all"),
    (["--no-chunked-loss"], "chunked_loss", False),
    (["--max-steps", "7"], "max_steps", 7),
    (["--warmup-epochs", "2.5"], "warmup_epochs", 2.5),
    (["--ema"], "ema", True),
    (["--gpt-model", "ARPG-XL", "--global-batch-size", "1024", "--lr", "4e-4"], "gpt_model", "ARPG-XL"),
])
def test_a_flag_sets_its_field_and_nothing_else(argv, field, value):
    cfg = train_config_from_args(parse(*argv))
    assert getattr(cfg, field) == value
    changed = {f.name for f in dataclasses.fields(TrainConfig)
               if getattr(cfg, f.name) != getattr(TrainConfig(code_path="codes"), f.name)}
    official = {"--global-batch-size": "global_batch_size", "--lr": "lr"}
    assert changed == {field} | {official[flag] for flag in argv if flag in official}


def test_numeric_flags_parse_their_type_and_bad_choices_are_refused():
    assert isinstance(parse("--epochs", "3").epochs, int) and isinstance(parse("--lr", "1").lr, float)
    with pytest.raises(SystemExit):
        parse("--data-parallel", "zero")
    with pytest.raises(SystemExit):
        add_train_args(__import__("argparse").ArgumentParser()).parse_args([])  # --code-path is required

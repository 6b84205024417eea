"""--drop-path-rate: timm's DropPath on every layer's residual branches, rates rising linearly in compute
order, dropout off, identity at eval, state dict unchanged."""
import pytest
import torch
from timm.layers import DropPath

from autoregressive.models.arpg import ARPG_models
from autoregressive.train.config import TrainConfig
from autoregressive.train.loop import build_model
from train_c2i import config_from_args, get_args_parser

TINY_RUN = ["--gpt-model", "ARPG-tiny", "--code-path", "unused", "--vocab-size", "32", "--num-classes", "5",
            "--image-size", "4", "--downsample-size", "1"]


def build(rate: float, token_dropout_p: float = 0.1):
    torch.manual_seed(0)
    args = get_args_parser().parse_args([*TINY_RUN, "--drop-path-rate", str(rate),
                                         "--token-dropout-p", str(token_dropout_p)])
    return build_model(config_from_args(args))


def layers_in_compute_order(model):
    return [*model.layers.self_dec, *model.layers.cross_dec]


def test_rates_rise_linearly_over_all_layers_and_dropout_is_off():
    model = build(0.3)
    assert model.config.drop_path_rate == 0.3
    assert model.config.resid_dropout_p == 0.0 and model.config.ffn_dropout_p == 0.0
    first, *rest = layers_in_compute_order(model)
    assert isinstance(first.drop_path, torch.nn.Identity)  # rate 0
    assert all(isinstance(layer.drop_path, DropPath) for layer in rest)
    assert [layer.drop_path.drop_prob for layer in rest] == pytest.approx([0.1, 0.2, 0.3])


def test_rate_zero_keeps_the_plain_model():
    model = build(0.0)
    assert model.config.resid_dropout_p == 0.1 and model.config.ffn_dropout_p == 0.1
    assert all(isinstance(layer.drop_path, torch.nn.Identity) for layer in layers_in_compute_order(model))


def test_state_dict_keys_do_not_change():
    plain, dropped = build(0.0), build(0.5)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in dropped.state_dict().items())


def test_active_in_training_identity_at_eval():
    # Token dropout off, residual dropout off (rate > 0 turns it off; passed as 0 for the plain model):
    # the only randomness left in training is class dropout (same seed) and drop path.
    plain = ARPG_models["ARPG-tiny"](vocab_size=32, num_classes=5, block_size=16, token_dropout_p=0.0,
                                     resid_dropout_p=0.0, ffn_dropout_p=0.0)
    dropped = build(0.5, token_dropout_p=0.0)
    dropped.load_state_dict(plain.state_dict())
    torch.nn.init.normal_(plain.head.weight, std=0.5)
    dropped.head.weight.data.copy_(plain.head.weight)
    tokens, labels = torch.randint(0, 32, (8, 16)), torch.arange(8) % 5
    orders = torch.stack([torch.randperm(16) for _ in range(8)])

    def logits(model, train: bool):
        torch.manual_seed(1)
        return model.train(train)(tokens, labels, orders=orders)[0]

    assert torch.equal(logits(plain, True), logits(plain, True))
    trained = logits(dropped, True)
    assert not torch.allclose(trained, logits(plain, True))
    assert torch.equal(logits(dropped, False), logits(plain, False))


def test_gradients_flow_through_dropped_layers():
    model = build(0.5).train()
    _, loss = model(torch.randint(0, 32, (4, 16)), torch.arange(4), targets=torch.randint(0, 32, (4, 16)))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_rates_and_missing_module_are_refused():
    with pytest.raises(ValueError, match="--drop-path-rate"):
        TrainConfig(code_path="", drop_path_rate=1.0)
    with pytest.raises(ValueError, match="drop_path_layer"):
        ARPG_models["ARPG-tiny"](drop_path_rate=0.1)

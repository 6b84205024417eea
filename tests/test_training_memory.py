"""Memory options of training: the chunked loss and activation checkpointing equal the plain path."""
import pytest
import torch

from conftest import build_tiny


def loss_and_grads(model, x, c, orders, **kwargs):
    model.zero_grad()
    torch.manual_seed(11)  # the same dropout masks on every path
    _, loss = model(x, c, targets=x, orders=orders, **kwargs)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_chunked_loss_and_grad_checkpointing_match_the_plain_path(monkeypatch):
    x = torch.randint(0, 32, (4, 16))
    c = torch.tensor([0, 1, 2, 3])
    orders = torch.stack([torch.randperm(16) for _ in range(4)])
    plain = build_tiny(seed=5).train()
    reference_loss, reference_grads = loss_and_grads(plain, x, c, orders)
    import autoregressive.models.loss as loss_module

    original = loss_module.chunked_cross_entropy
    monkeypatch.setattr("autoregressive.models.arpg.chunked_cross_entropy",
                        lambda f, w, t: original(f, w, t, chunk_size=24))  # several chunks, one partial
    for overrides, kwargs in (({}, {"return_logits": False}), ({"grad_checkpointing": True}, {}),
                              ({"grad_checkpointing": "all"}, {"return_logits": False}),
                              ({"grad_checkpointing": "cross"}, {}), ({"grad_checkpointing": "3"}, {})):
        model = build_tiny(seed=5, **overrides).train()
        loss, grads = loss_and_grads(model, x, c, orders, **kwargs)
        assert torch.allclose(loss, reference_loss, atol=1e-6), overrides
        for name, grad in grads.items():
            assert torch.allclose(grad, reference_grads[name], atol=1e-6), (overrides, kwargs, name)


def test_chunked_loss_returns_no_logits():
    model = build_tiny()
    logits, loss = model(torch.randint(0, 32, (2, 16)), torch.tensor([0, 1]), targets=torch.randint(0, 32, (2, 16)),
                         return_logits=False)
    assert logits is None and loss.ndim == 0


def test_grad_checkpointing_picks_layers_by_kind_or_count():
    def recomputed(spec):
        model = build_tiny(grad_checkpointing=spec)  # 2 self-attention layers, then 2 cross-attention layers
        return [layer.recompute for layer in [*model.layers.self_dec, *model.layers.cross_dec]]

    assert recomputed("none") == recomputed(False) == [False] * 4
    assert recomputed("all") == recomputed(True) == [True] * 4
    assert recomputed("self") == [True, True, False, False]
    assert recomputed("cross") == [False, False, True, True]
    assert recomputed("3") == [True, True, True, False]
    with pytest.raises(ValueError, match="grad_checkpointing"):
        build_tiny(grad_checkpointing="ffn")
    with pytest.raises(ValueError, match="grad_checkpointing"):
        build_tiny(grad_checkpointing="5")

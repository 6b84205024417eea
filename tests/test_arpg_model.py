import json
from pathlib import Path

import pytest
import torch

from autoregressive.models.arpg import ARPG_models, ARPGConfig
from conftest import build_tiny

MANIFESTS = Path(__file__).parent / "manifests"


@pytest.mark.parametrize("name,manifest", [("ARPG-L", "arpg_L"), ("ARPG-XL", "arpg_XL"), ("ARPG-XXL", "arpg_XXL")])
def test_state_dict_matches_released_manifest(name, manifest):
    expected = json.loads((MANIFESTS / f"{manifest}.json").read_text())
    with torch.device("meta"):
        model = ARPG_models[name]()
    got = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert got == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == expected["params"]
    assert model.config.ffn_hidden == expected["config"]["ffn_hidden"]
    assert model.config.embedding_rows == expected["config"]["embedding_rows"]


def test_builders_accept_overrides():
    with torch.device("meta"):
        model = ARPG_models["ARPG-L"](vocab_size=4096, num_classes=10, block_size=576, cls_token_num=1)
    assert model.embeddings.weight.shape == (4096 + 1 + 10 + 1 + 1, 1024)
    assert model.head.weight.shape == (4096, 1024)
    assert model.rope_cpu.shape == (1 + 576, 32, 2)


@pytest.mark.parametrize("bad,match", [(dict(block_size=200), "square"), (dict(dim=100), "divisible"),
                                       (dict(n_layer=5), "even")])
def test_config_rejects_impossible_combinations(bad, match):
    with pytest.raises(ValueError, match=match):
        ARPGConfig(**{"dim": 64, "n_layer": 4, "n_head": 4, **bad})


def test_class_token_rope_rows_are_zero_and_image_rows_rotate():
    model = build_tiny()
    table = model.rope_cpu
    assert torch.all(table[0] == 0)
    assert torch.allclose(table[1:].pow(2).sum(-1), torch.ones(16, 8))  # cos^2 + sin^2 = 1
    # first half of the planes follow the row, the second half the column of a 4x4 grid
    row_of, col_of = lambda slot: (slot - 1) // 4, lambda slot: (slot - 1) % 4
    assert torch.equal(table[1 + 1, :4], table[1 + 2, :4]) and row_of(2) == row_of(3)
    assert torch.equal(table[1 + 1, 4:], table[1 + 5, 4:]) and col_of(2) == col_of(6)


def test_logits_are_in_generation_order_and_causal(tiny_model):
    x = torch.randint(0, 32, (2, 16))
    c = torch.tensor([1, 4])
    orders = torch.stack([torch.randperm(16), torch.randperm(16)])
    logits, _ = tiny_model(x, c, orders=orders)
    changed = x.clone()
    changed[0, orders[0, 10]] = (x[0, orders[0, 10]] + 1) % 32  # the 11th token in the order
    changed_logits, _ = tiny_model(changed, c, orders=orders)
    assert torch.allclose(logits[0, :11], changed_logits[0, :11], atol=1e-6)  # predicts token 10 without seeing it
    assert not torch.allclose(logits[0, 11:], changed_logits[0, 11:], atol=1e-4)
    assert torch.equal(logits[1], changed_logits[1])


def test_loss_is_cross_entropy_in_generation_order(tiny_model):
    x = torch.randint(0, 32, (2, 16))
    c = torch.tensor([0, 2])
    orders = torch.stack([torch.randperm(16), torch.randperm(16)])
    logits, loss = tiny_model(x, c, targets=x, orders=orders)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), x.gather(1, orders).reshape(-1))
    assert torch.allclose(loss, expected)


def test_loss_decreases_on_a_fixed_batch():
    model = build_tiny().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 32, (8, 16))
    c = torch.randint(0, 5, (8,))
    losses = []
    for _ in range(30):
        _, loss = model(x, c, targets=x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_class_dropout_only_in_training():
    model = build_tiny(class_dropout_prob=1.0, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    x = torch.randint(0, 32, (2, 16))
    orders = torch.arange(16).expand(2, -1)
    eval_a, _ = model(x, torch.tensor([1, 1]), orders=orders)
    eval_b, _ = model(x, torch.tensor([2, 2]), orders=orders)
    assert not torch.allclose(eval_a, eval_b)  # eval: the class matters
    model.train()
    train_a, _ = model(x, torch.tensor([1, 1]), orders=orders)
    train_b, _ = model(x, torch.tensor([2, 2]), orders=orders)
    assert torch.equal(train_a, train_b)  # every label dropped to "no class"


def test_learned_positions_break_translation_invariance():
    """Without absolute positions, shifting every known token and target by one grid column (away
    from the border) leaves the logits unchanged: RoPE is relative and the class token is unrotated."""
    orders = torch.tensor([[1, 5, 2, 6, 0, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15]])
    shifted = torch.tensor([[2, 6, 3, 7]])
    x = torch.randint(0, 32, (1, 16))
    c = torch.tensor([3])
    for learned, invariant in ((False, True), (True, False)):
        model = build_tiny(learned_pos_embed=learned)
        if learned:
            torch.nn.init.normal_(model.pos_embeddings.weight, std=1.0)
        base, _ = model(x, c, orders=orders)
        moved_x = x.clone()
        moved_x[0, shifted[0]] = x[0, orders[0, :4]]
        moved_orders = torch.cat([shifted, torch.tensor([[i for i in range(16) if i not in (2, 6, 3, 7)]])], 1)
        moved, _ = model(moved_x, c, orders=moved_orders)
        assert torch.allclose(base[0, :4], moved[0, :4], atol=1e-5) == invariant

import pytest
import torch

from autoregressive.generate import generate
from autoregressive.sampling import step_sizes


def test_every_position_is_generated_exactly_once(tiny_model, monkeypatch):
    queried = []
    original = tiny_model.decode

    def recording_decode(known_ids, known_slots, query_slots, **kwargs):
        queried.append(query_slots.clone())
        return original(known_ids, known_slots, query_slots, **kwargs)

    monkeypatch.setattr(tiny_model, "decode", recording_decode)
    tokens = tiny_model.generate(torch.tensor([0, 3]), num_steps=5, cfg_scale=2.0,
                                 generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 16) and tokens.dtype == torch.long
    assert tokens.min() >= 0 and tokens.max() < 32
    slots = torch.cat(queried, dim=1)[:2] - 1  # cond rows; slot = 1 + position
    assert torch.equal(slots.sort(1).values, torch.arange(16).expand(2, -1))
    assert [q.shape[1] for q in queried] == step_sizes(16, 5, "arccos")
    assert all(q.shape[0] == 4 for q in queried)  # doubled batch for guidance


def test_no_guidance_pass_at_scale_one(tiny_model, monkeypatch):
    rows = []
    original = tiny_model.decode
    monkeypatch.setattr(tiny_model, "decode", lambda *a, **k: rows.append(a[0].shape[0]) or original(*a, **k))
    tiny_model.generate(torch.tensor([1, 2, 3]), num_steps=4, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert set(rows) == {3}


def test_one_token_per_step_greedy_matches_teacher_forcing(tiny_model):
    """With one token per step the cache sees exactly what causal teacher forcing sees."""
    orders = torch.stack([torch.randperm(16), torch.randperm(16)])
    c = torch.tensor([2, 4])
    tokens = tiny_model.generate(c, num_steps=16, cfg_scale=1.0, temperature=0, orders=orders)
    logits, _ = tiny_model(tokens, c, orders=orders)
    assert torch.equal(logits.argmax(-1), tokens.gather(1, orders))


def test_same_seed_same_tokens_and_orders_differ_per_sample(tiny_model):
    c = torch.tensor([1, 1])
    a = tiny_model.generate(c, num_steps=4, generator=torch.Generator().manual_seed(7))
    b = tiny_model.generate(c, num_steps=4, generator=torch.Generator().manual_seed(7))
    other = tiny_model.generate(c, num_steps=4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, other)
    greedy = tiny_model.generate(c, num_steps=4, temperature=0, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(greedy[0], greedy[1])  # same class, same greedy rule: only the orders differ


def test_shared_and_per_sample_orders(tiny_model):
    c = torch.tensor([0, 1])
    order = torch.randperm(16)
    shared = tiny_model.generate(c, num_steps=4, temperature=0, orders=order)
    per_sample = tiny_model.generate(c, num_steps=4, temperature=0, orders=order.expand(2, -1))
    assert torch.equal(shared, per_sample)
    alone = tiny_model.generate(c[1:], num_steps=4, temperature=0, orders=order)
    assert torch.equal(alone[0], shared[1])  # rows are independent


def test_guidance_combines_logits_with_the_scheduled_scale(tiny_model, monkeypatch):
    """cond favours token 1, uncond token 2: uncond + (cond - uncond) * s picks 1 once s > 1.5 / 1.3."""
    cond, uncond = torch.zeros(32), torch.zeros(32)
    cond[1], cond[2], uncond[2] = 1.0, 1.2, 1.5

    def fixed_decode(known_ids, known_slots, query_slots, **kwargs):
        rows, size = query_slots.shape
        half = torch.stack([cond] * (rows // 2) + [uncond] * (rows - rows // 2))
        return half[:, None, :].expand(rows, size, 32) if rows > 1 else cond.expand(1, size, 32)

    monkeypatch.setattr(tiny_model, "decode", fixed_decode)
    order = torch.randperm(16)
    run = lambda **kw: tiny_model.generate(torch.tensor([0]), num_steps=16, temperature=0, orders=order, **kw)[0, order]
    assert run(cfg_scale=1.0).tolist() == [2] * 16  # no guidance: cond alone
    assert run(cfg_scale=3.0, cfg_schedule="constant").tolist() == [1] * 16
    # linear: s = 1 + 2 * done_after / 16 is 1.125 for the first token, 1.25 for the second
    assert run(cfg_scale=3.0, cfg_schedule="linear").tolist() == [2] + [1] * 15


@pytest.mark.parametrize("condition,kwargs,match", [
    (torch.tensor([5]), {}, "out of range"),
    (torch.tensor([-1]), {}, "out of range"),
    (torch.tensor([0]), {"orders": torch.zeros(16, dtype=torch.long)}, "permutation"),
    (torch.tensor([0]), {"orders": torch.arange(15)}, "orders must be"),
    (torch.tensor([0]), {"cfg_schedule": "cosine"}, "cfg schedule"),
    (torch.tensor([0]), {"top_p": 0.0}, "top_p"),
])
def test_bad_arguments_are_explained(tiny_model, condition, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_model, condition, num_steps=4, **kwargs)

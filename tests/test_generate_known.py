"""Decoding with known tokens (the core of zero-shot editing)."""
import pytest
import torch

from autoregressive.fast_generate import FastSampler
from autoregressive.generate import SamplingConfig, generate, known_first

GREEDY = SamplingConfig(num_steps=4, cfg_scale=2.0, temperature=0)


def lower_half_known(batch=2):
    known = torch.randint(0, 32, (batch, 16))
    mask = torch.zeros(batch, 16, dtype=torch.bool)
    mask[:, :8] = True
    return known, mask


def test_known_tokens_come_back_unchanged_and_the_rest_is_generated_once(tiny_model, monkeypatch):
    known, mask = lower_half_known()
    queried, original = [], tiny_model.decode
    monkeypatch.setattr(tiny_model, "decode", lambda *a, **k: queried.append(a[2][:2].clone()) or original(*a, **k))
    out = generate(tiny_model, torch.tensor([1, 2]), SamplingConfig(num_steps=3, cfg_scale=3.0),
                   generator=torch.Generator().manual_seed(0), known=known, known_mask=mask)
    assert torch.equal(out[mask], known[mask])
    positions = torch.cat(queried, dim=1) - 1
    assert torch.equal(positions.sort(1).values, torch.arange(8, 16).expand(2, -1))


def test_all_unknown_mask_is_plain_generation(tiny_model):
    c = torch.tensor([0, 3])
    sampling = SamplingConfig(num_steps=4, cfg_scale=2.0)
    plain = generate(tiny_model, c, sampling, generator=torch.Generator().manual_seed(5))
    edited = generate(tiny_model, c, sampling, generator=torch.Generator().manual_seed(5),
                      known=torch.zeros(2, 16, dtype=torch.long), known_mask=torch.zeros(2, 16, dtype=torch.bool))
    assert torch.equal(plain, edited)


def test_prefix_cache_and_predictions_match_teacher_forcing(tiny_model):
    """One token per step after a causal prefix of known tokens: greedy picks are the argmax of the
    teacher-forcing logits, and the prefix cache equals the causal K/V teacher forcing computes."""
    known, mask = lower_half_known()
    c = torch.tensor([4, 0])
    orders = known_first(torch.stack([torch.randperm(16), torch.randperm(16)]), mask)
    out = generate(tiny_model, c, SamplingConfig(num_steps=8, cfg_scale=1.0, temperature=0),
                   orders=orders, known=known, known_mask=mask)
    logits, _ = tiny_model(out, c, orders=orders)
    assert torch.equal(logits[:, 8:].argmax(-1), out.gather(1, orders)[:, 8:])

    model = tiny_model
    prefix_ids = torch.cat([model.class_token_ids(c), out.gather(1, orders)], dim=1)
    prefix_slots = torch.cat([model.class_slots(2, "cpu"), orders + 1], dim=1)
    full, prefix = model.new_cache(2), model.new_cache(2)
    with torch.inference_mode():
        model.decode(prefix_ids[:, :16], prefix_slots[:, :16], orders[:, :1] + 1, causal=True, cache=full)
        model.decode(prefix_ids[:, :9], prefix_slots[:, :9], orders[:, 8:9] + 1, causal=True, cache=prefix)
    assert torch.allclose(full.keys[:, :, :, :9], prefix.keys[:, :, :, :9], atol=1e-6)
    assert torch.allclose(full.values[:, :, :, :9], prefix.values[:, :, :, :9], atol=1e-6)


def test_fast_path_steps_equal_reference_with_known_tokens(tiny_model):
    known, mask = lower_half_known(3)
    c = torch.tensor([1, 2, 3])
    sampling = SamplingConfig(num_steps=3, cfg_scale=2.5, top_k=5)
    reference = generate(tiny_model, c, sampling, generator=torch.Generator().manual_seed(2), known=known, known_mask=mask)
    fast = FastSampler(tiny_model, use_graphs=False).generate(c, sampling, generator=torch.Generator().manual_seed(2),
                                                               known=known, known_mask=mask)
    assert torch.equal(reference, fast)


@pytest.mark.parametrize("mask_fn,match", [
    (lambda m: m.fill_(True), "nothing to generate"),
    (lambda m: m[:, :15], "known_mask must be"),
    (lambda m: m.__setitem__((0, slice(0, 3)), True) or m, "same number"),
])
def test_bad_masks_are_explained(tiny_model, mask_fn, match):
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask = mask_fn(mask)
    with pytest.raises(ValueError, match=match):
        generate(tiny_model, torch.tensor([0, 1]), GREEDY, known=torch.zeros(2, 16, dtype=torch.long), known_mask=mask)

"""Fused projections: the state dict speaks the release's names; fused names load as they are."""
import pytest
import torch

from autoregressive.weights import module_state_dict
from conftest import build_tiny


def test_export_splits_and_load_merges_without_a_switch():
    source = build_tiny(seed=3)
    official = source.state_dict()
    assert "layers.self_dec.0.attn.to_q.weight" in official and not any(".qkv." in key for key in official)
    fused = module_state_dict(source)
    assert "layers.self_dec.0.attn.qkv.weight" in fused and "layers.to_kv.weight" in fused
    for state in (official, fused):
        target = build_tiny(seed=4)
        target.load_state_dict(state, strict=True)
        assert all(torch.equal(a, b) for a, b in zip(target.parameters(), source.parameters()))
    assert fused["head.weight"].data_ptr() == source.head.weight.data_ptr()  # read into in place


def test_a_half_official_state_dict_is_refused():
    state = build_tiny().state_dict()
    del state["layers.self_dec.1.attn.to_v.weight"]
    with pytest.raises(RuntimeError, match="qkv.weight"):
        build_tiny().load_state_dict(state, strict=True)


def test_model_generate_takes_every_option_of_the_loop(tiny_model):
    from autoregressive.generate import generate
    from autoregressive.sampling import SamplingConfig

    known = torch.randint(0, 32, (2, 16))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 4:9] = True
    fields = dict(num_steps=3, cfg_scale=2.5, cfg_schedule="constant", sample_schedule="cosine", temperature=0.7,
                  top_k=5, top_p=0.9)
    got = tiny_model.generate(torch.tensor([1, 3]), **fields, generator=torch.Generator().manual_seed(4),
                              known=known, known_mask=mask)
    want = generate(tiny_model, torch.tensor([1, 3]), SamplingConfig(**fields),
                    generator=torch.Generator().manual_seed(4), known=known, known_mask=mask)
    assert torch.equal(got, want) and torch.equal(got[mask], known[mask])
    with pytest.raises(TypeError):
        tiny_model.generate(torch.tensor([1]), 8)  # sampling fields are keyword-only

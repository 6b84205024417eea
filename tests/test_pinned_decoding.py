"""Sampled tokens pinned bitwise to those recorded before the decoding loop was refactored.

The fixture holds the tokens of the reference loop, of `model.generate` and of the fast path (static
buffers, run eagerly on the CPU) for the tiny model with fixed weights and generator seeds, plus the
tiny model's state-dict names and shapes. Re-record only for an intended change of the numerics:
    PYTHONPATH=.:tests python3 tests/test_pinned_decoding.py
"""
import json
from pathlib import Path

import pytest
import torch

from autoregressive.fast_generate import FastSampler
from autoregressive.generate import SamplingConfig, generate
from conftest import build_tiny

FIXTURE = Path(__file__).parent / "fixtures" / "pinned_decoding.json"
CONDITION = [0, 4, 2]
CASES = {
    "arccos-linear-greedy": dict(num_steps=5, cfg_scale=3.0, temperature=0),
    "cosine-linear-sampled": dict(num_steps=4, cfg_scale=2.0, sample_schedule="cosine"),
    "arccos-constant-topk-topp": dict(num_steps=6, cfg_scale=2.5, cfg_schedule="constant", top_k=10, top_p=0.9),
    "cosine-constant-hot": dict(num_steps=3, cfg_scale=4.0, cfg_schedule="constant", sample_schedule="cosine",
                                temperature=1.5),
    "no-guidance-one-step": dict(num_steps=1, cfg_scale=1.0),
    "every-token-a-step": dict(num_steps=16, cfg_scale=4.0, top_k=3),
}


def known_tokens():
    known = torch.arange(48).remainder(32).view(3, 16)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, [0, 3, 5, 6, 9, 15]] = True
    return known, mask


def decode_all(model) -> dict:
    """Tokens of every case and path, as lists, keyed by "<case>/<path>"."""
    condition, out, fast = torch.tensor(CONDITION), {}, FastSampler(model, use_graphs=False)
    gen = lambda: torch.Generator().manual_seed(7)
    for name, fields in CASES.items():
        sampling = SamplingConfig(**fields)
        out[f"{name}/reference"] = generate(model, condition, sampling, generator=gen())
        out[f"{name}/model.generate"] = model.generate(condition, **fields, generator=gen())
        out[f"{name}/fast"] = fast.generate(condition, sampling, generator=gen())
        known, mask = known_tokens()
        out[f"{name}/known"] = generate(model, condition, sampling, generator=gen(), known=known, known_mask=mask)
        out[f"{name}/known-fast"] = fast.generate(condition, sampling, generator=gen(), known=known, known_mask=mask)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    out["shared-order/model.generate"] = model.generate(condition, num_steps=4, cfg_scale=2.0, orders=order,
                                                        generator=gen())
    return {key: value.tolist() for key, value in out.items()}


def record() -> dict:
    model = build_tiny(seed=11)
    digits = build_tiny(seed=12, learned_pos_embed=True)
    return {"tiny": decode_all(model), "tiny-learned-pos": decode_all(digits),
            "state_dict": {key: list(value.shape) for key, value in model.state_dict().items()}}


@pytest.fixture(scope="module")
def pinned():
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("model_name,seed,overrides", [("tiny", 11, {}), ("tiny-learned-pos", 12, {"learned_pos_embed": True})])
def test_tokens_equal_the_recorded_ones(pinned, model_name, seed, overrides):
    got = decode_all(build_tiny(seed=seed, **overrides))
    assert got.keys() == pinned[model_name].keys()
    for key, tokens in pinned[model_name].items():
        assert got[key] == tokens, key


def test_state_dict_names_and_shapes_equal_the_recorded_ones(pinned):
    state = build_tiny(seed=11).state_dict()
    assert {key: list(value.shape) for key, value in state.items()} == pinned["state_dict"]


if __name__ == "__main__":
    torch.set_num_threads(1)
    FIXTURE.write_text(json.dumps(record()) + "\n")
    print(f"wrote {FIXTURE}")

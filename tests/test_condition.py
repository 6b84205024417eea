"""Controllable generation: condition tokens as the target queries (models/condition.py)."""
import pytest
import torch

from autoregressive.fast_generate import FastSampler
from autoregressive.generate import SamplingConfig, generate
from autoregressive.train.finetune import load_initial_weights
from autoregressive.weights import load_model_weights
from conftest import build_tiny

NUM_CONDITIONS = 3
NO_DROPOUT = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)


def build_controlled(seed: int = 0, **overrides):
    model = build_tiny(seed, condition_vocab_size=NUM_CONDITIONS, **overrides)
    torch.nn.init.normal_(model.condition_embeddings.weight, std=1.0)
    return model


def random_maps(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, NUM_CONDITIONS, (batch, 16), generator=torch.Generator().manual_seed(seed))


def test_off_by_default_adds_no_parameters_and_refuses_a_map(tiny_model):
    assert tiny_model.config.condition_vocab_size == 0
    assert not any(key.startswith("condition") for key in tiny_model.state_dict())
    assert set(build_controlled().state_dict()) - set(tiny_model.state_dict()) == {"condition_embeddings.weight"}
    x = torch.randint(0, 32, (2, 16))
    with pytest.raises(ValueError, match="takes no condition map"):
        tiny_model(x, torch.tensor([0, 1]), condition_map=random_maps(2))
    with pytest.raises(ValueError, match="takes no condition map"):
        tiny_model.generate(torch.tensor([0, 1]), num_steps=4, condition_map=random_maps(2))


def test_changing_the_condition_at_one_position_changes_that_targets_logits_only():
    model = build_controlled()
    x, c = torch.randint(0, 32, (1, 16)), torch.tensor([2])
    orders = torch.randperm(16).unsqueeze(0)
    maps = random_maps(1)
    base, _ = model(x, c, orders=orders, condition_map=maps)
    position = int(orders[0, 7])
    changed_map = maps.clone()
    changed_map[0, position] = (maps[0, position] + 1) % NUM_CONDITIONS
    changed, _ = model(x, c, orders=orders, condition_map=changed_map)
    differs = (base - changed).abs().amax(-1)[0] > 0
    assert differs.tolist() == [i == 7 for i in range(16)]  # logits are in generation order


def save_weights(path, model) -> str:
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def test_condition_queries_take_the_mask_path_rotation_and_all(tmp_path):
    """With every condition row equal to the [MASK] row, a condition model computes exactly what the
    class-only model computes, for any map: the condition query is embedded at the target's slot and
    rotated with its RoPE as the [MASK] query is."""
    class_only = build_tiny(learned_pos_embed=True)
    controlled = build_tiny(learned_pos_embed=True, condition_vocab_size=NUM_CONDITIONS)
    load_initial_weights(controlled, save_weights(tmp_path / "class_only.pt", class_only))
    x, c, orders = torch.randint(0, 32, (2, 16)), torch.tensor([0, 3]), torch.randperm(16).expand(2, -1)
    expected, _ = class_only(x, c, orders=orders)
    assert torch.equal(controlled(x, c, orders=orders, condition_map=random_maps(2))[0], expected)
    sampling = SamplingConfig(num_steps=5, cfg_scale=2.0)
    assert torch.equal(generate(controlled, c, sampling, generator=torch.Generator().manual_seed(1),
                                condition_map=random_maps(2)),
                       generate(class_only, c, sampling, generator=torch.Generator().manual_seed(1)))


def test_condition_dropout_in_training_only_and_with_every_dropped_class():
    x, c, orders = torch.randint(0, 32, (2, 16)), torch.tensor([1, 2]), torch.arange(16).expand(2, -1)
    for class_drop, condition_drop in ((0.0, 1.0), (1.0, 0.0)):
        model = build_controlled(class_dropout_prob=class_drop, condition_dropout_prob=condition_drop, **NO_DROPOUT)
        eval_a, _ = model(x, c, orders=orders, condition_map=random_maps(2, 0))
        eval_b, _ = model(x, c, orders=orders, condition_map=random_maps(2, 1))
        assert not torch.allclose(eval_a, eval_b)
        model.train()
        train_a, _ = model(x, c, orders=orders, condition_map=random_maps(2, 0))
        train_b, _ = model(x, c, orders=orders, condition_map=random_maps(2, 1))
        no_map, _ = model(x, c, orders=orders)
        assert torch.equal(train_a, train_b) and torch.equal(train_a, no_map)


def test_one_token_per_step_greedy_matches_teacher_forcing_with_a_map():
    model = build_controlled()
    orders, c, maps = torch.stack([torch.randperm(16), torch.randperm(16)]), torch.tensor([2, 4]), random_maps(2)
    tokens = model.generate(c, num_steps=16, cfg_scale=1.0, temperature=0, orders=orders, condition_map=maps)
    logits, _ = model(tokens, c, orders=orders, condition_map=maps)
    assert torch.equal(logits.argmax(-1), tokens.gather(1, orders))
    other = model.generate(c, num_steps=16, cfg_scale=1.0, temperature=0, orders=orders, condition_map=random_maps(2, 5))
    assert not torch.equal(tokens, other)


def test_guidance_queries_the_map_in_the_conditional_half_and_no_condition_in_the_other(monkeypatch):
    model = build_controlled()
    calls, original = [], model.decode

    def recording_decode(known_ids, known_slots, query_slots, **kwargs):
        calls.append((known_ids.clone(), query_slots.clone(), kwargs["query_conditions"].clone()))
        return original(known_ids, known_slots, query_slots, **kwargs)

    monkeypatch.setattr(model, "decode", recording_decode)
    maps = random_maps(2)
    model.generate(torch.tensor([0, 3]), num_steps=4, cfg_scale=3.0, condition_map=maps,
                   generator=torch.Generator().manual_seed(0))
    null_class, null_condition = model.config.null_class_id, model.config.null_condition_id
    assert torch.equal(calls[0][0][2:, 0], torch.full((2,), null_class))
    for _, query_slots, conditions in calls:
        cond_half, uncond_half = conditions.chunk(2)
        assert torch.equal(cond_half, maps.gather(1, query_slots[:2] - 1))  # slot = 1 + position
        assert torch.all(uncond_half == null_condition)


def test_one_scale_guides_class_and_condition_together():
    """One step, greedy: the tokens are the argmax of uncond + (cond - uncond) * scale, where cond sees
    the class and the map and uncond sees "no class" and "no condition"."""
    model = build_controlled()
    c, maps, orders, scale = torch.tensor([1, 3]), random_maps(2), torch.arange(16), 3.0
    tokens = model.generate(c, num_steps=1, cfg_scale=scale, cfg_schedule="constant", temperature=0, orders=orders,
                            condition_map=maps)
    config, slots = model.config, (orders + 1).expand(2, -1)
    class_slot = torch.zeros(2, 1, dtype=torch.long)
    cond = model.decode(model.class_token_ids(c), class_slot, slots, causal=False, query_conditions=maps)
    uncond = model.decode(torch.full((2, 1), config.null_class_id), class_slot, slots, causal=False,
                          query_conditions=torch.full_like(maps, config.null_condition_id))
    assert torch.equal(tokens, (uncond + (cond - uncond) * scale).argmax(-1))
    assert not torch.equal(tokens, cond.argmax(-1))  # the guidance changed the greedy tokens


@pytest.mark.parametrize("with_known", [False, True])
def test_fast_path_steps_equal_the_reference_loop_with_a_map(with_known):
    model = build_controlled()
    sampler = FastSampler(model, use_graphs=False)
    c, maps = torch.tensor([0, 4]), random_maps(2)
    extra = {}
    if with_known:
        mask = torch.zeros(2, 16, dtype=torch.bool)
        mask[:, :6] = True
        extra = dict(known=torch.randint(0, 32, (2, 16)), known_mask=mask)
    for sampling in (SamplingConfig(num_steps=5, cfg_scale=3.0), SamplingConfig(num_steps=4, cfg_scale=1.0)):
        reference = generate(model, c, sampling, generator=torch.Generator().manual_seed(3), condition_map=maps, **extra)
        fast = sampler.generate(c, sampling, generator=torch.Generator().manual_seed(3), condition_map=maps, **extra)
        assert torch.equal(fast, reference)
        plain = sampler.generate(c, sampling, generator=torch.Generator().manual_seed(3), **extra)
        assert torch.equal(plain, generate(model, c, sampling, generator=torch.Generator().manual_seed(3), **extra))


@pytest.mark.parametrize("bad_map, match", [
    (torch.full((2, 16), NUM_CONDITIONS + 1), "out of range"),
    (torch.zeros(2, 15, dtype=torch.long), "must be"),
    (torch.zeros(2, 16), "integer ids"),
])
def test_bad_condition_maps_are_explained(bad_map, match):
    with pytest.raises(ValueError, match=match):
        build_controlled().generate(torch.tensor([0, 1]), num_steps=4, condition_map=bad_map)


def test_checkpoint_round_trip_is_strict_and_exact(tmp_path):
    model = build_controlled()
    loaded = load_model_weights(build_controlled(seed=1), save_weights(tmp_path / "controlled.pt", model))
    x, c, orders, maps = torch.randint(0, 32, (2, 16)), torch.tensor([0, 1]), torch.randperm(16).expand(2, -1), random_maps(2)
    assert torch.equal(loaded(x, c, orders=orders, condition_map=maps)[0], model(x, c, orders=orders, condition_map=maps)[0])
    with pytest.raises(ValueError, match="missing keys: condition_embeddings.weight"):  # sampling loads strictly
        load_model_weights(build_controlled(), save_weights(tmp_path / "class_only.pt", build_tiny()))
    with pytest.raises(ValueError, match="unexpected keys: condition_embeddings.weight"):
        load_model_weights(build_tiny(), str(tmp_path / "controlled.pt"))


def test_fine_tuning_from_a_class_only_checkpoint_is_strict_plus_fresh_condition_rows(tmp_path):
    class_only = build_tiny()
    path = save_weights(tmp_path / "class_only.pt", class_only)
    controlled = load_initial_weights(build_controlled(seed=3), path)
    mask_row = class_only.embeddings.weight[controlled.config.mask_token_id]
    assert torch.equal(controlled.condition_embeddings.weight, mask_row.expand(NUM_CONDITIONS + 1, -1))
    for key, value in class_only.state_dict().items():
        assert torch.equal(controlled.state_dict()[key], value)
    resumed = load_initial_weights(build_controlled(seed=4), save_weights(tmp_path / "controlled.pt", controlled))
    assert torch.equal(resumed.condition_embeddings.weight, controlled.condition_embeddings.weight)
    incomplete = {key: value for key, value in class_only.state_dict().items() if key != "head.weight"}
    torch.save({"model": incomplete}, tmp_path / "incomplete.pt")
    with pytest.raises(ValueError, match="missing keys: head.weight"):
        load_initial_weights(build_controlled(), str(tmp_path / "incomplete.pt"))
    with pytest.raises(ValueError, match="embeddings.weight: checkpoint"):
        load_initial_weights(build_controlled(vocab_size=40), path)

import pytest
import torch

from autoregressive.fast_generate import FastSampler
from autoregressive.generate import SamplingConfig, generate
from conftest import build_tiny


@pytest.mark.parametrize("sampling", [
    SamplingConfig(num_steps=5, cfg_scale=3.0, temperature=0),
    SamplingConfig(num_steps=4, cfg_scale=1.0, temperature=0, sample_schedule="cosine"),
    SamplingConfig(num_steps=6, cfg_scale=2.5, cfg_schedule="constant", temperature=1.0, top_k=10, top_p=0.9),
])
def test_static_buffer_steps_equal_the_reference_loop(sampling):
    """The fast path's bookkeeping (static buffers, cache lengths, one output buffer) run eagerly on the
    CPU gives the reference loop's tokens, greedy and sampled with the same generator; reused twice."""
    model = build_tiny()
    sampler = FastSampler(model, use_graphs=False)
    for seed in (0, 1):
        condition = torch.tensor([0, 4, 2])
        reference = generate(model, condition, sampling, generator=torch.Generator().manual_seed(seed))
        fast = sampler.generate(condition, sampling, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(fast, reference)


def test_new_settings_rebuild_the_steps():
    model = build_tiny()
    sampler = FastSampler(model, use_graphs=False)
    order = torch.randperm(16)
    for steps, batch in ((4, 2), (8, 2), (8, 3)):
        sampling = SamplingConfig(num_steps=steps, cfg_scale=2.0, temperature=0)
        condition = torch.arange(batch)
        assert torch.equal(sampler.generate(condition, sampling, orders=order),
                           generate(model, condition, sampling, orders=order))


def test_draw_settings_follow_each_call():
    """Steps kept for one guidance setting serve calls that change only temperature, top-k or top-p:
    each call draws with its own settings (greedy, then sampled, then greedy again)."""
    model = build_tiny()
    sampler = FastSampler(model, use_graphs=False)
    condition = torch.tensor([0, 4, 2])
    base = SamplingConfig(num_steps=5, cfg_scale=2.0, temperature=0)
    for sampling in (base, SamplingConfig(num_steps=5, cfg_scale=2.0, temperature=1.0, top_k=10), base):
        reference = generate(model, condition, sampling, generator=torch.Generator().manual_seed(3))
        fast = sampler.generate(condition, sampling, generator=torch.Generator().manual_seed(3))
        assert torch.equal(fast, reference)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_fused_layer_plumbing_gives_the_reference_tokens(backend):
    """The fused path splits each layer around its attention and traces the parts with dynamic shapes;
    with backends that do not change the arithmetic it must give the reference loop's tokens, and
    leave the model as it was (the compiled parts are passed to the layers, never set on them)."""
    model = build_tiny()
    sampling = SamplingConfig(num_steps=5, cfg_scale=3.0, temperature=1.0)
    condition = torch.tensor([0, 4, 2])
    reference = generate(model, condition, sampling, generator=torch.Generator().manual_seed(0))
    fused = FastSampler(model, use_graphs=False, compile_layers=backend).generate(condition, sampling,
                                                                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(fused, reference)
    again = generate(model, condition, sampling, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, reference)


def test_reference_loop_runs_the_fused_layers_when_asked():
    """make_sampler(use_fast=False, compile_layers=...) is the reference the fused fast path is checked against
    on the GPU: the plain loop with the compiled layer parts, with inductor asked to round like eager ops only
    while inside."""
    import torch._inductor.config as inductor

    from autoregressive.fast_generate import make_sampler

    model = build_tiny()
    sampling = SamplingConfig(num_steps=5, cfg_scale=3.0, temperature=1.0)
    condition = torch.tensor([0, 4, 2])
    seen = set()  # a set, not a list: dynamo guards on a list's length, so each append compiled the part again
    for layer in [*model.layers.self_dec, *model.layers.cross_dec]:
        before = layer.before_attention

        def spy(*args, _before=before, **kwargs):
            seen.add(getattr(inductor, "emulate_precision_casts", True))
            return _before(*args, **kwargs)

        layer.before_attention = spy
    reference = generate(model, condition, sampling, generator=torch.Generator().manual_seed(0))
    assert seen and not any(seen)  # the eager loop runs the same parts, with inductor's defaults
    seen.clear()
    compiled = make_sampler(model, use_fast=False, compile_layers="aot_eager")
    fused = compiled(condition, sampling, torch.Generator().manual_seed(0))
    assert torch.equal(fused, reference) and seen and all(seen)
    assert not getattr(inductor, "emulate_precision_casts", False)


# A second value of every SamplingConfig field, each changing the tokens of BASE below.
CHANGED_FIELDS = {"num_steps": 6, "cfg_scale": 1.5, "cfg_schedule": "constant", "sample_schedule": "cosine",
                  "temperature": 0.5, "top_k": 4, "top_p": 0.8, "kv_cache": "fp8"}


def test_changing_any_sampling_field_between_calls_follows_the_reference_loop():
    """One sampler, two calls: the second, with one field changed, gives the reference loop's tokens.
    The eager steps replay the steps they were built for, as graphs would, so steps kept under a key
    that missed a field would give the old setting's tokens here."""
    import dataclasses

    assert set(CHANGED_FIELDS) == {field.name for field in dataclasses.fields(SamplingConfig)}
    model, condition = build_tiny(), torch.tensor([0, 4, 2])
    base = SamplingConfig(num_steps=5, cfg_scale=3.0, cfg_schedule="linear", sample_schedule="arccos")
    seeded = lambda: torch.Generator().manual_seed(5)
    base_tokens = generate(model, condition, base, generator=seeded())
    for name, value in CHANGED_FIELDS.items():
        changed = dataclasses.replace(base, **{name: value})
        sampler = FastSampler(model, use_graphs=False)
        assert torch.equal(sampler.generate(condition, base, generator=seeded()), base_tokens)
        reference = generate(model, condition, changed, generator=seeded())
        assert not torch.equal(reference, base_tokens), name  # the change matters
        assert torch.equal(sampler.generate(condition, changed, generator=seeded()), reference), name


def test_each_kv_cache_kind_gets_steps_of_its_own():
    """kv_cache is part of the key of the captured steps (it is not a draw field): switching it builds
    new steps on a cache of that kind, and switching back builds model-dtype ones again, with the
    reference loop's tokens each time."""
    model, condition = build_tiny(), torch.tensor([0, 4, 2])
    sampler = FastSampler(model, use_graphs=False)
    built = []
    for kv_cache in ("weights", "fp8", "fp8", "weights"):
        sampling = SamplingConfig(num_steps=5, cfg_scale=3.0, kv_cache=kv_cache)
        fast = sampler.generate(condition, sampling, generator=torch.Generator().manual_seed(2))
        assert torch.equal(fast, generate(model, condition, sampling, generator=torch.Generator().manual_seed(2)))
        built.append(sampler.cache)
    assert [cache.keys.dtype for cache in built] == [torch.float32, torch.float8_e4m3fn, torch.float8_e4m3fn,
                                                     torch.float32]
    assert built[0] is not built[1] and built[1] is built[2] and built[3] is not built[0]
    assert built[1].nbytes < built[0].nbytes / 3  # 1 byte a number instead of 4, plus a scale per vector


def test_the_step_plan_is_the_one_description_of_a_decoding(tiny_model):
    """Cache lengths add up the tokens fed before, only an edit's first step is causal, the guidance
    scale follows the schedule, and the cache holds exactly what the steps write."""
    from autoregressive.generate import start_decoding

    known, mask = torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :3] = True
    sampling = SamplingConfig(num_steps=4, cfg_scale=3.0)
    for kwargs, first_fed in (({}, 1), ({"known": known, "known_mask": mask}, 4)):
        start = start_decoding(tiny_model, torch.tensor([0, 1]), sampling, **kwargs)
        steps, generated = start.steps, 16 - start.num_known
        assert [step.fed for step in steps] == [first_fed] + [step.size for step in steps[:-1]]
        assert [step.cache_length for step in steps] == [sum(s.fed for s in steps[:i]) for i in range(len(steps))]
        assert [step.causal for step in steps] == [first_fed > 1] + [False] * (len(steps) - 1)
        assert [step.guidance for step in steps] == [1 + 2.0 * step.done_after / generated for step in steps]
        assert steps[-1].done_after == generated and start.cache_capacity == first_fed + generated - steps[-1].size
    plain = start_decoding(tiny_model, torch.tensor([0]), SamplingConfig(num_steps=4, cfg_scale=1.0))
    assert all(step.guidance is None for step in plain.steps) and plain.fed_ids.shape[0] == 1


def test_fused_parts_compile_once_per_kind_and_shape_for_two_models_and_every_cache():
    """Two model sizes in one process, every KV cache kind, new batch sizes: each kind of compiled layer
    part (attention type, weight shapes, cache slot) holds at most two dynamo entries (a one-token
    sequence and any other), far from the recompile limit past which the layers ran eagerly; a later
    batch size compiles nothing; the tokens stay the reference loop's."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from autoregressive import fast_generate
    from autoregressive.sampling import KV_CACHE_DTYPES

    def entries():  # dynamo entries per compiled part of this test's models (sizes no other test uses)
        return {kind: len(_debug_get_cache_entry_list(part._torchdynamo_orig_callable.__code__))
                for kind, part in fast_generate._compiled_parts.items() if kind[3][0][1][-1] in (40, 56)}

    def check(sampler, model, kv_cache, batch):
        sampling, condition = SamplingConfig(num_steps=3, cfg_scale=2.0, kv_cache=kv_cache), torch.arange(batch)
        fast = sampler.generate(condition, sampling, generator=torch.Generator().manual_seed(0))
        assert torch.equal(fast, generate(model, condition, sampling, generator=torch.Generator().manual_seed(0)))

    models = [build_tiny(0, dim=40, n_head=5), build_tiny(1, dim=56, n_head=7)]
    samplers = [FastSampler(model, use_graphs=False, compile_layers="eager") for model in models]
    for sampler, model in zip(samplers, models):
        for kv_cache in KV_CACHE_DTYPES:
            check(sampler, model, kv_cache, 2)
    first = entries()
    # per model: self-attention before (with and without a cache slot) and after, cross-attention before and after
    assert len(first) == 10 and max(first.values()) <= 2
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    assert max(first.values()) < limit
    check(samplers[0], models[0], "int8", 3)
    check(samplers[1], models[1], "weights", 5)
    check(FastSampler(models[0], use_graphs=False, compile_layers="eager"), models[0], "weights", 3)  # a second sampler
    assert entries() == first


def test_inductor_compiles_the_layer_parts_in_its_deterministic_mode(monkeypatch, tiny_model):
    """Outside it, Inductor times some reductions' launch configurations in each process, and two processes
    sampling one seed with --compile-layers could round differently; other backends take no options."""
    from autoregressive import fast_generate

    seen = []
    monkeypatch.setattr(fast_generate, "_compiled_parts", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    layer = tiny_model.layers.self_dec[0]
    for backend in ("inductor", "eager"):
        kind = fast_generate.part_kind(layer, fast_generate._after_attention, backend)
        fast_generate.compiled_part(kind, fast_generate._after_attention, backend)
    assert seen == [{"dynamic": True, "backend": "inductor", "options": {"deterministic": True}},
                    {"dynamic": True, "backend": "eager", "options": None}]

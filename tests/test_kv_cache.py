"""The KV cache: positions written once, and the opt-in quantised storage (int8 or e4m3 codes with a
float32 scale per vector) that every attention path reads back close to the model-dtype cache."""
import pytest
import torch

from autoregressive.generate import SamplingConfig, generate
from autoregressive.models.attention import attend
from autoregressive.models.kv_cache import FP8_DTYPE, QUANTISED_DTYPES, KVCache, ScaledCodes, quantise
from conftest import build_tiny


def test_fp8_round_trip_error_is_within_e4m3_rounding():
    """Each entry within 1/16 of itself (3 mantissa bits, round to nearest), or scale / 1024 below
    e4m3's normal range; magnitudes over 12 orders; the all-zero vector (class token keys) stays zero."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 50, 64, generator=generator) * torch.logspace(-6, 6, 50).view(1, 1, 50, 1)
    x[0, 0, 0] = 0.0
    x[1, 1, 1, 5] = 1e-12  # far below the rest of its vector: flushed to zero, within scale / 1024
    for source in (x, x.to(torch.bfloat16)):
        codes, scale = quantise(source, FP8_DTYPE)
        assert codes.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == source.shape[:-1]
        back = ScaledCodes(codes, scale).dequantise(torch.float32)
        bound = source.float().abs() / 16 + scale.unsqueeze(-1) / 1024
        assert torch.all((back - source.float()).abs() <= bound * (1 + 1e-6))
        assert torch.equal(back[0, 0, 0], torch.zeros(64)) and scale[0, 0, 0] == 0
        # the largest entry is stored as 448: back up to float32 rounding of the scale
        assert torch.allclose(back.abs().amax(-1), source.float().abs().amax(-1), rtol=1e-6, atol=0)
        assert torch.isfinite(back).all()


def test_int8_round_trip_error_is_within_half_a_step():
    """Each entry within scale / 2 (127 steps a side, round to nearest), whatever its own size; the
    largest entry of each vector is stored as +-127 exactly; the all-zero vector stays zero."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 50, 64, generator=generator) * torch.logspace(-6, 6, 50).view(1, 1, 50, 1)
    x[0, 0, 0] = 0.0
    for source in (x, x.to(torch.bfloat16)):
        codes, scale = quantise(source, torch.int8)
        assert codes.dtype == torch.int8 and scale.shape == source.shape[:-1] and codes.abs().max() == 127
        back = ScaledCodes(codes, scale).dequantise(torch.float32)
        assert torch.all((back - source.float()).abs() <= scale.unsqueeze(-1) * (0.5 + 1e-5))
        assert torch.equal(back[0, 0, 0], torch.zeros(64)) and scale[0, 0, 0] == 0
        assert torch.equal(codes.abs().amax(-1)[scale > 0], torch.full_like(codes[..., 0][scale > 0], 127))
    ties = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5] + [0.0] * 26])  # scale 1: halves round to even
    assert quantise(ties, torch.int8)[0][0, :6].tolist() == [127, 0, 2, 2, 0, -2]


@pytest.mark.parametrize("code_dtype", QUANTISED_DTYPES)
def test_quantised_cache_writes_by_position_and_returns_scaled_views(code_dtype):
    cache = KVCache(num_sets=2, batch_size=2, num_heads=3, max_len=6, head_dim=8, dtype=code_dtype,
                    device=torch.device("cpu"))
    assert cache.quantised and cache.keys.dtype == code_dtype and cache.key_scales.shape == (2, 2, 3, 6)
    first, second = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 2, 8)
    cache.write(1, first, -first)
    cache.advance(4)
    keys, values = cache.write(1, second, -second)
    assert isinstance(keys, ScaledCodes) and keys.data.shape == (2, 3, 6, 8) and keys.scale.shape == (2, 3, 6)
    expected = torch.cat([first, second], dim=2)
    assert torch.equal(keys.dequantise(torch.float32),
                       ScaledCodes(*quantise(expected, code_dtype)).dequantise(torch.float32))
    assert torch.equal(values.dequantise(torch.float32), -keys.dequantise(torch.float32))
    assert torch.equal(cache.keys[0].float(), torch.zeros(2, 3, 6, 8))  # the other set is untouched
    plain = KVCache(2, 2, 3, 6, 8, torch.bfloat16, torch.device("cpu"))
    assert not plain.quantised and isinstance(plain.write(0, first, first)[0], torch.Tensor)


@pytest.mark.parametrize("code_dtype", QUANTISED_DTYPES)
def test_attention_over_a_quantised_cache_reads_it_dequantised_off_the_kernel(code_dtype):
    """Off CUDA (and wherever the Triton kernel does not apply) both attention kinds, causal or not,
    are SDPA over the cache dequantised to the queries' dtype."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 4, 16, generator=generator, dtype=torch.bfloat16)
    k, v = (ScaledCodes(*quantise(torch.randn(2, 3, 10, 16, generator=generator), code_dtype)) for _ in range(2))
    for causal in (False, True):
        out = attend(q, k, v, causal)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, attend(q, k.dequantise(torch.bfloat16), v.dequantise(torch.bfloat16), causal))


@torch.no_grad()
def decoded_logits(model, cache_dtype):
    """Two decoding passes through one cache: class token and 4 tokens, then 4 more; (8, 4, V) logits of the
    second pass's 4 targets."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 32, (8, 9), generator=generator)
    ids[:, 0] = model.class_token_ids(torch.arange(8) % 5)[:, 0]
    slots = torch.cat([torch.zeros(8, 1, dtype=torch.long), torch.rand(8, 16, generator=generator).argsort(1) + 1], 1)
    cache = model.new_cache(8, dtype=cache_dtype)
    model.decode(ids[:, :5], slots[:, :5], slots[:, 5:9], causal=True, cache=cache)
    return model.decode(ids[:, 5:], slots[:, 5:9], slots[:, 9:13], causal=False, cache=cache)


def test_quantised_caches_decode_close_to_the_model_dtype_cache():
    """Tiny random model (a large head, so logits spread wide): logits within 15% of their spread (FP8)
    and several times closer still (int8), almost every top-1 equal; greedy decodings mostly equal (a
    near-tie flips a token, and the flip feeds back into later steps)."""
    model = build_tiny()
    exact, fp8, int8 = (decoded_logits(model, dtype) for dtype in (None, FP8_DTYPE, torch.int8))
    assert (fp8 - exact).abs().max() < 0.15 * exact.std()
    assert (fp8.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.9
    assert 0 < (int8 - exact).abs().max() < (fp8 - exact).abs().max() / 3
    assert (int8.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.95
    condition = torch.arange(20) % 5
    orders = torch.rand(20, 16, generator=torch.Generator().manual_seed(0)).argsort(1)
    greedy = {kv: generate(model, condition, SamplingConfig(num_steps=5, cfg_scale=3.0, temperature=0, kv_cache=kv),
                           orders=orders) for kv in ("model", "fp8")}
    assert 0.8 <= (greedy["fp8"] == greedy["model"]).float().mean() < 1.0
    by_kwargs = model.generate(condition, num_steps=5, cfg_scale=3.0, temperature=0, kv_cache="fp8", orders=orders)
    assert torch.equal(by_kwargs, greedy["fp8"])


@pytest.mark.parametrize("kv_cache", ["int8", "fp8"])
def test_an_edit_decodes_through_a_quantised_cache(kv_cache):
    """Known tokens enter the cache in one causal pass (dequantised for the masked SDPA) and are kept."""
    model = build_tiny()
    known = torch.arange(32).remainder(32).view(2, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :6] = True
    tokens = generate(model, torch.tensor([1, 3]), SamplingConfig(num_steps=4, cfg_scale=2.0, kv_cache=kv_cache),
                      generator=torch.Generator().manual_seed(0), known=known, known_mask=mask)
    assert torch.equal(tokens[mask], known[mask]) and tokens.min() >= 0 and tokens.max() < 32


def test_self_attention_layers_write_the_cache_inside_their_compilable_part():
    """Over a cache in the weights' dtype, a self-attention layer's before_attention writes the step's
    keys and values (so a compiled part fuses the write into its RoPE kernel); attention then reads them
    from the cache. A quantised cache is written by its own kernel after it. Past the capacity, one
    clear error before anything is written."""
    model = build_tiny()
    layer = model.layers.self_dec[0]
    calls = []
    real_before = layer.before_attention

    def spy(x, rope, *cache_buffers, **kwargs):
        calls.append(len(cache_buffers))
        return real_before(x, rope, *cache_buffers, **kwargs)

    layer.before_attention = spy
    plain, quantised = decoded_logits(model, None), decoded_logits(model, torch.int8)
    assert calls == [3, 3, 0, 0]  # buffers and start for the bf16 cache's two passes, none for int8's
    layer.before_attention = real_before
    assert torch.equal(plain, decoded_logits(model, None))
    with torch.no_grad():
        cache = model.new_cache(2, max_len=3)
        ids, slots = torch.zeros(2, 4, dtype=torch.long), torch.arange(4).expand(2, 4)
        with pytest.raises(ValueError, match="KV cache overflow: 4 positions > capacity 3"):
            model.decode(ids, slots, slots[:, :1], causal=True, cache=cache)
        assert cache.length == 0 and not cache.keys.any()

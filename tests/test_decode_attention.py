"""The Triton decoding-attention kernel, run on the CPU by Triton's interpreter (float16: the
interpreter has no bfloat16 arithmetic; the GPU benchmark checks bfloat16 against SDPA), over a
model-dtype cache and over an FP8 one (the interpreter loads and converts float8_e4m3fn)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from autoregressive.kernels import decode_attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not decode_attention.available(), reason="Triton is not installed")


def interpreter_runs_loops_over_arguments() -> bool:
    """Older interpreters (Triton 3.6) cannot loop up to an integer argument."""
    import triton

    return tuple(int(part) for part in triton.__version__.split(".")[:2]) >= (3, 8)


@pytest.mark.skipif(not interpreter_runs_loops_over_arguments(), reason="Triton's interpreter is too old")
def test_kernel_matches_float32_attention_in_the_interpreter():
    """Cache views with a longer capacity, query counts from 1 to 40 (tiles 16, 32, 64), key counts not
    multiples of the key block; output in (B, n_q, H, d) memory order."""
    script = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from autoregressive.kernels.decode_attention import decode_attention
        torch.manual_seed(0)
        for m, n in [(1, 1), (3, 5), (4, 70), (16, 64), (17, 130), (40, 9)]:
            cache_k = torch.randn(2, 3, 140, 32, dtype=torch.float16)
            cache_v = torch.randn_like(cache_k)
            q = torch.randn(2, m, 3, 32, dtype=torch.float16).transpose(1, 2)
            k, v = cache_k[:, :, :n], cache_v[:, :, :n]
            out = decode_attention(q, k, v, block_n=32)
            expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            error = (out.float() - expected).abs().max().item()
            assert out.shape == (2, 3, m, 32) and out.dtype == torch.float16, (m, n, out.shape)
            assert out.transpose(1, 2).is_contiguous(), out.stride()
            assert error < 2e-3, (m, n, error)
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.skipif(not interpreter_runs_loops_over_arguments(), reason="Triton's interpreter is too old")
def test_scaled_kernel_matches_float32_attention_over_the_dequantised_cache_in_the_interpreter():
    """SCALED: float8_e4m3fn or int8 codes and per-position float32 scales, as views of a quantised
    KVCache (a longer capacity, one set of several), against float32 attention over the same cache
    dequantised: the kernel adds no error beyond the float16 one of the unscaled kernel (the codes'
    rounding itself is what scripts/check_precision.py judges). Default launch settings and 32-key blocks."""
    script = textwrap.dedent("""
        import itertools, torch, torch.nn.functional as F
        from autoregressive.kernels.decode_attention import decode_attention
        from autoregressive.models.kv_cache import QUANTISED_DTYPES, KVCache
        torch.manual_seed(0)
        # value magnitudes far from 1 (scales down to 2e-8, whose products with p fp16 would flush to zero
        # if the kernel did not divide them by the largest), values growing along the keys (the running
        # maximum rescales what is accumulated), queries near fp16's limit (outputs stay fp16-normal:
        # the output is in q's dtype)
        cases = [(1, 1, 1, 3, 1), (3, 5, 1, 3, 1e-2), (4, 70, 3e-3, 3, 1), (17, 130, 1, 3, 1e3),
                 (2, 100, 1.5e4, 1e-4, 1e-2)]
        settings = [(code_dtype, block_n) for code_dtype in QUANTISED_DTYPES for block_n in (None, 32)]
        for (code_dtype, block_n), (m, n, q_size, k_size, v_size) in itertools.product(settings, cases):
            cache = KVCache(2, 2, 3, 140, 32, code_dtype, torch.device("cpu"))
            growth = torch.logspace(-3, 0, n).view(1, 1, n, 1)
            k_in, v_in = torch.randn(2, 3, n, 32) * k_size, torch.randn(2, 3, n, 32) * v_size * growth
            k, v = cache.write(1, k_in, v_in)
            q = (torch.randn(2, m, 3, 32).clamp(-4, 4) * q_size).half().transpose(1, 2)
            k32, v32 = k.dequantise(torch.float32), v.dequantise(torch.float32)
            expected = F.scaled_dot_product_attention(q.float(), k32, v32)
            out = decode_attention(q, k.data, v.data, k.scale, v.scale, block_n=block_n)
            assert out.shape == (2, 3, m, 32) and out.dtype == torch.float16, (m, n, out.shape)
            error = ((out.float() - expected).abs().max() / expected.abs().max()).item()
            assert error < 2e-3, (code_dtype, block_n, m, n, q_size, v_size, error)
            if code_dtype == torch.int8:  # widened by bit moves (the default) or converted: the same output
                converted = decode_attention(q, k.data, v.data, k.scale, v.scale, block_n=block_n,
                                             widen_by_bits=False)
                assert torch.equal(converted, out), (block_n, m, n)
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_only_cuda_inference_inputs_take_the_kernel():
    q = torch.randn(1, 2, 4, 64, dtype=torch.bfloat16)
    k = v = torch.randn(1, 2, 10, 64, dtype=torch.bfloat16)
    assert not decode_attention.supports(q, k, v)  # CPU tensors: SDPA
    if torch.cuda.is_available():
        q, k, v = q.cuda(), k.cuda(), v.cuda()
        assert decode_attention.supports(q, k, v)
        assert not decode_attention.supports(q.float(), k.float(), v.float())
        assert not decode_attention.supports(q.repeat(1, 1, 20, 1), k, v)  # 80 queries
        assert not decode_attention.supports(q.detach().requires_grad_(), k, v)  # a copy: q stays as it is
        codes = k.to(torch.float8_e4m3fn)
        assert not decode_attention.supports(q, codes, codes)  # FP8 codes only with their scales
        assert decode_attention.supports(q, codes, codes, scaled=True) == (
            torch.cuda.get_device_capability() >= (8, 9))  # Triton converts e4m3 from sm89 on
        int8 = k.to(torch.int8)
        assert decode_attention.supports(q, int8, int8, scaled=True) and not decode_attention.supports(q, int8, int8)
    assert not decode_attention.supports(q.cpu(), k.cpu().to(torch.float8_e4m3fn), v.cpu().to(torch.float8_e4m3fn),
                                         scaled=True)

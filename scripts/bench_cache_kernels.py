"""The quantised KV caches' two kernels (int8 and FP8 codes) against the bf16 cache's work, at decoding
shapes, on one GPU.

Per model size (heads of 64, rows = 2 x batch under guidance): writing one step's new keys into the
cache (the bf16 cache's slice copy against autoregressive/kernels/cache_write.py), and decoding
attention over a full cache (autoregressive/kernels/decode_attention.py over bf16 against int8 and FP8
codes, FP8 with a few launch settings; FP8 rows need compute capability 8.9+). Each line: median time of a CUDA-graph replay
(triton.testing.do_bench_cudagraph), the bytes the kernel must move over that time, and the error
against float32 attention over the bf16 cache (attention rows only). Interleaved repetitions, medians.

    python -m scripts.bench_cache_kernels --models ARPG-L ARPG-XL ARPG-XXL --batch-sizes 64 256
    python -m scripts.bench_cache_kernels --models ARPG-L ARPG-XXL --batch-sizes 64 256 --flashinfer

--flashinfer adds FlashInfer's attention (the optional flashinfer-python package; it compiles its kernels
with nvcc at first use) over the same bf16 cache, read in place as a paged cache of one page per row
(HND layout): its batch decode with the row's queries as a group of query heads sharing each key head
(tensor cores), and its batch prefill with the queries as a ragged batch, not causal. FlashInfer has no
int8 cache, and its FP8 cache takes one scale per tensor, not ours per vector: those rows are ours only.
"""
import argparse
import importlib.util
import statistics

import torch
import torch.nn.functional as F

from autoregressive.kernels import decode_attention as attention_kernel
from autoregressive.kernels import cache_write
from autoregressive.kernels.codes import KV_CODES
from autoregressive.models.arpg import ARPG_models
from autoregressive.models.kv_cache import quantise
from autoregressive.utils.cli import UserError, run_main

HEAD_DIM = 64
# FlashInfer's scratch space: decode fits its 128 MB default; the prefill plan splits the keys and keeps partial
# outputs there, which at batch 256 takes several GB (the default failed every shape but the smallest)
DECODE_WORKSPACE_BYTES, PREFILL_WORKSPACE_BYTES = 128 * 2**20, 8 * 2**30
# label: decode_attention launch settings for a quantised cache (8 warps ran at half the speed of 4; 256-key
# and 32-key blocks, and codes read as int16 pairs widened by bit moves, were slower, on an H100, 2026-11-28)
ATTENTION_SETTINGS = {
    "default": {},  # decode_attention's own choice for the shape
    "n128 w4 s3": dict(block_n=128, num_warps=4, num_stages=3),
    "n64 w4 s2": dict(block_n=64, num_warps=4, num_stages=2),
}


def time_graph(fn) -> float:
    import triton.testing
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")


def flashinfer_cases(q: torch.Tensor, kv: torch.Tensor, cache_bytes: int) -> dict:
    """FlashInfer's two ways to attend q (rows, H, m, d; a view of (rows, m, H, d)) over the bf16 cache
    kv (2, rows, H, n, d) with no copy of it: one page of n keys per row, planned once (CUDA-graph mode).
    Each way is planned on its own, so one that fails here (its JIT build, or a workspace it outgrows)
    leaves the other's row."""
    import flashinfer

    rows, heads, queries, head_dim = q.shape
    keys, device = kv.shape[3], q.device
    pages = torch.arange(rows + 1, dtype=torch.int32, device=device)  # row i's page is page i
    last_len = torch.full((rows,), keys, dtype=torch.int32, device=device)
    query_rows = pages * queries
    cache = (kv[0], kv[1])  # each (rows = pages, H, n = page size, d): the HND layout

    def decode():  # the m queries of a row and head as m query heads of one key head (q heads h*m .. h*m + m-1)
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            torch.zeros(DECODE_WORKSPACE_BYTES, dtype=torch.uint8, device=device), "HND", use_cuda_graph=True,
            use_tensor_cores=True, paged_kv_indptr_buffer=pages.clone(), paged_kv_indices_buffer=pages[:-1].clone(),
            paged_kv_last_page_len_buffer=last_len.clone())
        wrapper.plan(pages, pages[:-1], last_len, heads * queries, heads, head_dim, keys, q_data_type=q.dtype,
                     kv_data_type=kv.dtype)
        return lambda: wrapper.run(q.reshape(rows, heads * queries, head_dim), cache).view(rows, heads, queries, -1)

    def prefill():  # the queries as a ragged batch, each row's against its own page
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            torch.zeros(PREFILL_WORKSPACE_BYTES, dtype=torch.uint8, device=device), "HND", use_cuda_graph=True,
            qo_indptr_buf=query_rows.clone(), paged_kv_indptr_buf=pages.clone(),
            paged_kv_indices_buf=pages[:-1].clone(), paged_kv_last_page_len_buf=last_len.clone())
        wrapper.plan(query_rows, pages, pages[:-1], last_len, heads, heads, head_dim, keys, causal=False,
                     q_data_type=q.dtype, kv_data_type=kv.dtype)
        return lambda: wrapper.run(q.transpose(1, 2).reshape(rows * queries, heads, head_dim), cache).view(
            rows, queries, heads, -1).transpose(1, 2)

    # outputs in ours' (rows, H, m, d) order; the copies the layouts need are part of the timed work
    cases = {}
    for label, plan in (("attention: flashinfer decode, queries as a head group (tensor cores)", decode),
                        ("attention: flashinfer prefill, ragged queries", prefill)):
        try:
            cases[label] = (plan(), cache_bytes)
        except Exception as error:  # ours' rows and the other way's still come
            print(f"{label}: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1][:300]}")
    return cases


def bench_size(name: str, batch: int, new_tokens: int, queries: int, keys: int, reps: int, flashinfer: bool = False):
    with torch.device("meta"):  # the config alone, no weights
        heads = ARPG_models[name]().config.n_head
    rows, device = 2 * batch, torch.device("cuda")
    generator = torch.Generator(device).manual_seed(0)
    # a (rows, n, 3, H, d) projection's key slice, strided as SelfAttention.project hands it to the cache
    qkv = torch.randn(rows, new_tokens, 3, heads, HEAD_DIM, device=device, generator=generator, dtype=torch.bfloat16)
    new_keys = qkv[:, :, 1].transpose(1, 2)
    code_dtypes = {kind: code.dtype for kind, code in KV_CODES.items()
                   if not code.needs_sm89 or attention_kernel.has_fp8(device)}
    bf16_cache = torch.zeros(rows, heads, keys + new_tokens, HEAD_DIM, device=device, dtype=torch.bfloat16)
    scales = torch.zeros(rows, heads, keys + new_tokens, device=device)
    write_bytes = new_keys.numel() * 2
    cases = {"write: bf16 slice copy": (lambda: bf16_cache[:, :, keys:].copy_(new_keys), 2 * write_bytes)}
    for kind, dtype in code_dtypes.items():
        codes = torch.zeros(rows, heads, keys + new_tokens, HEAD_DIM, device=device, dtype=dtype)
        cases[f"write: {kind} kernel"] = (
            lambda codes=codes: cache_write.quantise_into(new_keys, codes[:, :, keys:], scales[:, :, keys:]),
            write_bytes * 1.5 + rows * heads * new_tokens * 4)
    q = torch.randn(rows, queries, heads, HEAD_DIM, device=device, generator=generator, dtype=torch.bfloat16).transpose(1, 2)
    kv = torch.randn(2, rows, heads, keys, HEAD_DIM, device=device, generator=generator, dtype=torch.bfloat16)
    reference = F.scaled_dot_product_attention(q.float(), kv[0].float(), kv[1].float())
    cache_bytes = kv.numel() * 2
    for label, settings in (("bf16 n64 w4 s2", dict(block_n=64, num_stages=2)),
                            ("bf16 n128 w4 s3", dict(block_n=128, num_stages=3))):
        cases[f"attention: {label}"] = (
            lambda settings=settings: attention_kernel.decode_attention(q, kv[0], kv[1], **settings), cache_bytes)
    for kind, dtype in code_dtypes.items():
        (k_codes, k_scale), (v_codes, v_scale) = quantise(kv[0], dtype), quantise(kv[1], dtype)
        settings_of = dict(ATTENTION_SETTINGS)
        if kind == "int8":
            settings_of["n64 w4 s2, converted (not widened by bits)"] = dict(block_n=64, num_stages=2,
                                                                         widen_by_bits=False)
        for label, settings in settings_of.items():
            cases[f"attention: {kind} {label}"] = (
                lambda settings=settings, k=k_codes, v=v_codes, ks=k_scale, vs=v_scale:
                    attention_kernel.decode_attention(q, k, v, ks, vs, **settings),
                cache_bytes / 2 + 2 * k_scale.numel() * 4)
    if flashinfer:
        cases.update(flashinfer_cases(q, kv, cache_bytes))
    times = {label: [] for label in cases}
    for _ in range(reps):
        for label, (fn, _) in cases.items():
            times[label].append(time_graph(fn))
    print(f"\n### {name}, batch {batch} ({rows} rows x {heads} heads): write {new_tokens} tokens; attention "
          f"{queries} queries over {keys} keys\n")
    print("| kernel | us | GB/s | max abs error vs float32 |")
    print("|---|---|---|---|")
    for label, (fn, nbytes) in cases.items():
        micros = statistics.median(times[label]) * 1e3
        error = ""
        if label.startswith("attention"):
            error = f"{(fn().float() - reference).abs().max().item():.3g}"
        print(f"| {label} | {micros:.1f} | {nbytes / micros / 1e3:.0f} | {error} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ARPG-L", "ARPG-XL", "ARPG-XXL"], choices=list(ARPG_models))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens a step writes per row")
    parser.add_argument("--queries", nargs="+", type=int, default=[8, 28],
                        help="queries a row (a step's targets: 8 early in a 64-step decoding, up to 28 late)")
    parser.add_argument("--keys", type=int, default=257)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--flashinfer", action="store_true",
                        help="add FlashInfer's attention over the same bf16 cache (pip install flashinfer-python)")
    args = parser.parse_args(argv)
    if args.flashinfer and importlib.util.find_spec("flashinfer") is None:
        raise UserError("--flashinfer needs the optional flashinfer-python package (pip install flashinfer-python)")
    if not (torch.cuda.is_available() and attention_kernel.available()):
        raise UserError("bench_cache_kernels needs a CUDA GPU and Triton")
    for batch in args.batch_sizes:
        for queries in args.queries:
            for name in args.models:
                bench_size(name, batch, args.new_tokens, queries, args.keys, args.reps, args.flashinfer)


if __name__ == "__main__":
    run_main(main)

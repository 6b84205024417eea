"""Sampling throughput: the reference loop (autoregressive/generate.py) against the CUDA-graph fast path.

Random bf16 weights (throughput does not depend on them; the head gets random weights so the tokens
vary), 64 steps, CFG 4.5 constant, arccos schedule. Repetitions of the two paths are interleaved and
the medians reported. Peaks are each path's alone (alone_peak_gib: a fresh sampler run once after the
timing, the memory it allocates and reserves on top of what the others hold, plus the weights; the VQ
weights are not counted). End-to-end adds the VQ-16 decode of the tokens as sample_c2i_ddp.py runs it by
default (float32 with TF32, decoder compiled; --vq-precision fp16 for the faster one).

--concurrent-batches 1 2 4 times instead several batches sampled at once, each on a CUDA stream with a
sampler of its own (autoregressive/sampler_pool.py, sample_c2i_ddp.py's flag of that name), tokens only,
and checks that every batch's tokens equal those of one batch at a time.

--kv-caches weights,int8,fp8 adds the fast path over a quantised KV cache (--kv-cache int8 / fp8), timed
interleaved with the others (the "KV cache GiB" column is each path's own cache).

    python -m scripts.bench_sample --models ARPG-L ARPG-XL ARPG-XXL --batch-sizes 64 256
    python -m scripts.bench_sample --models ARPG-L --batch-sizes 256 --kv-caches weights,int8,fp8
    python -m scripts.bench_sample --models ARPG-L ARPG-XXL --batch-sizes 32 --concurrent-batches 1 2 3 4
"""
import argparse
import dataclasses
import statistics

import torch

from autoregressive.fast_generate import FastSampler, make_sampler
from autoregressive.generate import generate
from autoregressive.kernels.codes import KV_CODES
from autoregressive.kernels.decode_attention import has_fp8
from autoregressive.models.arpg import ARPG_models
from autoregressive.models.kv_cache import ScaledCodes, quantise
from autoregressive.sampler_pool import SamplerPool
from autoregressive.sampling import KV_CACHE_DTYPES, SamplingConfig, add_sampling_args
from autoregressive.utils.cli import RenamedFlag, UserError, check_at_least, run_main
from autoregressive.utils.device import enable_tf32
from autoregressive.weights import PRECISIONS, prepare_vq
from scripts.bench_common import alone_peak_gib, model_bytes, parse_kv_caches, pool_batches, random_model, timed


@torch.inference_mode()
def compiled_layers_logits_check(model, device) -> str:
    """One teacher-forced pass over random tokens: the bf16 logits of the eager layers and of the compiled
    ones, each against the same model in float32 (max |difference|, share of equal top-1 tokens)."""
    import copy

    from autoregressive.fast_generate import compiled_layer_parts, compiling_parts

    config = model.config
    generator = torch.Generator(device).manual_seed(1)
    rows, n = 32, config.block_size
    slots = torch.rand(rows, n, device=device, generator=generator).argsort(1) + config.cls_token_num
    ids = torch.randint(0, config.vocab_size, (rows, n), device=device, generator=generator)
    ids[:, 0], slots[:, 0] = config.vocab_size + 1, 0  # class 0 first
    exact = copy.deepcopy(model).float().decode(ids, slots, slots, causal=True)
    eager = model.decode(ids, slots, slots, causal=True)
    parts = compiled_layer_parts(model)
    with compiling_parts(parts):
        compiled = model.decode(ids, slots, slots, causal=True, layer_parts=parts)

    def against_float32(logits):
        top1 = (logits.argmax(-1) == exact.argmax(-1)).float().mean()
        return f"max |diff| {(logits - exact).abs().max():.3g}, same top-1 {100 * top1:.2f}%"

    return (f"logits of one teacher-forced pass vs float32 (std {exact.std():.3g}): eager bf16 "
            f"{against_float32(eager)}; compiled layers bf16 {against_float32(compiled)}")


@torch.inference_mode()
def decode_kernel_check(model, device) -> str:
    """The Triton decoding attention against float32 SDPA, beside SDPA's own bf16 kernel, at this
    model's head shape (512 rows, 4 queries, 100 of 257 cached keys)."""
    import torch.nn.functional as F

    from autoregressive.kernels.decode_attention import decode_attention

    heads, head_dim = model.config.n_head, model.config.head_dim
    generator = torch.Generator(device).manual_seed(2)
    cache = torch.randn(2, 512, heads, 257, head_dim, device=device, generator=generator, dtype=torch.bfloat16)
    q = torch.randn(512, 4, heads, head_dim, device=device, generator=generator, dtype=torch.bfloat16).transpose(1, 2)
    k, v = cache[0, :, :, :100], cache[1, :, :, :100]
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    triton_error = (decode_attention(q, k, v).float() - exact).abs().max()
    sdpa_error = (F.scaled_dot_product_attention(q, k, v).float() - exact).abs().max()
    line = f"decoding attention vs float32: Triton max |diff| {triton_error:.3g}, SDPA bf16 {sdpa_error:.3g}"
    for kind, code in KV_CODES.items():
        dtype = code.dtype
        if code.needs_sm89 and not has_fp8(q.device):
            line += f"; Triton {kind} KV: not on this GPU (needs sm89+)"
            continue
        k8, v8 = ScaledCodes(*quantise(cache[0], dtype)), ScaledCodes(*quantise(cache[1], dtype))  # strided like a cache
        k8, v8 = (ScaledCodes(part.data[:, :, :100], part.scale[:, :, :100]) for part in (k8, v8))
        out = decode_attention(q, k8.data, v8.data, k8.scale, v8.scale).float()
        dequantised = F.scaled_dot_product_attention(q.float(), k8.dequantise(torch.float32), v8.dequantise(torch.float32))
        line += (f"; Triton {kind} KV {(out - exact).abs().max():.3g} "
                 f"({(out - dequantised).abs().max():.3g} against float32 over the dequantised cache)")
    return line


def check_greedy(title: str, key: str, fast: FastSampler, reference, labels, sampling: SamplingConfig, order):
    """Greedy tokens of a fast path in a fixed order, checked against the reference loop's with the same
    settings (the fast path must equal it); returns them."""
    greedy = dataclasses.replace(sampling, temperature=0.0)
    tokens = fast.generate(labels, greedy, orders=order)
    equal = reference(labels, greedy, None, orders=order) == tokens
    print(f"{title}: greedy {key} == its reference loop: {bool(equal.all())} "
          f"({100 * equal.float().mean():.2f}% of tokens equal)", flush=True)
    return tokens


def bench_concurrent(name, batch_sizes, counts, sampling, reps, device):
    """Rows (model, batch, batches at once, img/s, x one at a time, same tokens, peak GiB allocated) of the
    sampler pool at each count: the same batches (seeded by their first sample, as sample_c2i_ddp.py)
    through each pool, repetitions interleaved across the pools; the first run of each (graph capture
    included) gives its tokens and peak."""
    model = random_model(name, device)
    rows = []
    for batch in batch_sizes:
        num_batches = 4 * max(counts)
        run = lambda pool: pool_batches(pool, model, batch, num_batches, sampling, device)
        pools, peaks, tokens = {}, {}, {}
        for count in counts:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            pools[count] = SamplerPool(lambda: make_sampler(model), count, device)
            tokens[count] = run(pools[count])
            peaks[count] = (torch.cuda.max_memory_allocated() - before + model_bytes(model)) / 2**30  # as if alone
        times = {count: [] for count in counts}
        for _ in range(reps):
            for count in counts:
                times[count].append(timed(lambda: run(pools[count]))[1])
        base = num_batches * batch / statistics.median(times[counts[0]])
        for count in counts:
            rate = num_batches * batch / statistics.median(times[count])
            same = all(torch.equal(a, b) for a, b in zip(tokens[count], tokens[counts[0]]))
            rows.append((name, batch, count, rate, rate / base, same, peaks[count]))
            pools[count].close()
    return rows


def bench_model(name, batch_sizes, sampling, reps, vq, device, compile_layers=False, kv_caches=("weights",)):
    model = random_model(name, device)
    fast_key = "compiled layers" if compile_layers else "fast"
    # One fast sampler per cache kind: a sampler keeps the graphs of its last settings only.
    new_sampler = lambda: FastSampler(model, compile_layers=compile_layers)
    fast = {kind: new_sampler() for kind in kv_caches}
    settings = {kind: dataclasses.replace(sampling, kv_cache=kind) for kind in kv_caches}
    fast_keys = {kind: fast_key if kind == "weights" else f"{fast_key}, {kind} KV" for kind in kv_caches}
    # The reference loop, with the same compiled layers when the fast path has them.
    reference, plain_key = make_sampler(model, use_fast=False, compile_layers=compile_layers), "plain, compiled layers" if compile_layers else "plain"
    print(f"{name}: {decode_kernel_check(model, device)}", flush=True)
    if compile_layers:
        print(f"{name}: {compiled_layers_logits_check(model, device)}", flush=True)
    rows = []
    for batch in batch_sizes:
        labels = torch.arange(batch, device=device) % model.config.num_classes
        grid = model.config.grid_size
        paths = {plain_key: lambda g: reference(labels, settings["weights"], g)}
        for kind in kv_caches:
            paths[fast_keys[kind]] = lambda g, kind=kind: fast[kind].generate(labels, settings[kind], generator=g)
        order = torch.randperm(model.config.block_size, device=device)
        greedy = {kind: check_greedy(f"{name} batch {batch}", fast_keys[kind], fast[kind], reference, labels,
                                     settings[kind], order) for kind in kv_caches}
        for kind in kv_caches[1:]:
            print(f"{name} batch {batch}: greedy {fast_keys[kind]} tokens equal to {fast_key}'s "
                  f"{100 * (greedy[kind] == greedy['weights']).float().mean():.2f}%", flush=True)
        if compile_layers:
            eager_equal = generate(model, labels, dataclasses.replace(sampling, temperature=0.0), orders=order) \
                == greedy["weights"]
            print(f"{name} batch {batch}: greedy compiled-layers tokens equal to the eager layers' "
                  f"{100 * eager_equal.float().mean():.2f}%", flush=True)
        # The reference loop allocates the cache the weights-dtype fast path keeps.
        cache_gib = {fast_keys[kind]: fast[kind].cache.nbytes / 2**30 for kind in kv_caches}
        cache_gib[plain_key] = cache_gib[fast_key]
        seeded = [paths[key](torch.Generator(device).manual_seed(3)) for key in (plain_key, fast_key)]
        times = {key: [] for key in paths}
        decode_times = []
        for key, path in paths.items():  # warm-up (graph capture for the fast paths)
            tokens = path(torch.Generator(device).manual_seed(0))
        if vq is not None:  # warm-up (compile) of the decoder at this batch size
            with torch.inference_mode():
                vq.decode_code(tokens, shape=(batch, vq.config.codebook_embed_dim, grid, grid))
        for rep in range(reps):
            for key, path in paths.items():
                tokens, seconds = timed(lambda: path(torch.Generator(device).manual_seed(rep)))
                times[key].append(seconds)
            if vq is not None:
                shape = (batch, vq.config.codebook_embed_dim, grid, grid)
                with torch.inference_mode():
                    _, seconds = timed(lambda: vq.decode_code(tokens, shape=shape))
                decode_times.append(seconds)
        decode = statistics.median(decode_times) if decode_times else float("nan")
        # Each path's memory alone (a fresh sampler for a fast path; the VQ weights are not counted)
        fresh = {plain_key: lambda: reference(labels, settings["weights"], torch.Generator(device).manual_seed(0))}
        for kind in kv_caches:
            fresh[fast_keys[kind]] = lambda kind=kind: new_sampler().generate(
                labels, settings[kind], generator=torch.Generator(device).manual_seed(0))
        peaks = {key: alone_peak_gib(fresh[key], model_bytes(model)) for key in paths}
        speeds = {}
        for key in paths:
            token_s = statistics.median(times[key])
            speeds[key] = (batch / token_s, batch / (token_s + decode))
            rows.append((name, batch, key, *speeds[key], peaks[key], cache_gib[key]))
        for key in paths:
            if key != plain_key:
                rows.append((name, batch, f"{key}/plain", speeds[key][0] / speeds[plain_key][0],
                             speeds[key][1] / speeds[plain_key][1], float("nan"), float("nan")))
        print(f"{name} batch {batch}: sampled with the same seed, {fast_key} == {plain_key}: "
              f"{torch.equal(seeded[0], seeded[1])}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ARPG-L", "ARPG-XL", "ARPG-XXL"], choices=list(ARPG_models))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-decode", action="store_true", help="tokens only, no VQ decode column")
    parser.add_argument("--vq-precision", choices=list(PRECISIONS), default="none",
                        help="decoder dtype (compiled), as sample_c2i_ddp.py's flag; none = float32 with TF32")
    parser.add_argument("--compile-layers", action="store_true", help="time the fast path with the layers compiled "
                        "(close to, not equal to, the reference loop) instead of the exact one")
    parser.add_argument("--fused", dest="compile_layers", action=RenamedFlag, new_flag="--compile-layers", nargs=0,
                        const=True)
    parser.add_argument("--concurrent-batches", nargs="+", type=int, default=None,
                        help="time the sampler pool at these counts of batches at once instead (first: the baseline)")
    parser.add_argument("--kv-caches", default="weights", help="comma-separated KV cache kinds of the fast path, timed "
                        f"side by side (from {', '.join(KV_CACHE_DTYPES)}; weights always runs, as the baseline)")
    args = add_sampling_args(parser, cfg_scale=4.5, cfg_schedule="constant").parse_args(argv)
    for flag, values in (("--batch-sizes", args.batch_sizes), ("--step", [args.step]), ("--reps", [args.reps]),
                         ("--concurrent-batches", args.concurrent_batches or [])):
        for value in values:
            check_at_least(flag, value, 1)
    sampling, kv_caches = SamplingConfig.from_args(args), parse_kv_caches(args.kv_caches)
    if sampling.kv_cache != "weights":
        raise UserError("bench_sample.py compares cache kinds with --kv-caches (weights always runs); "
                        f"drop --kv-cache {sampling.kv_cache} and pass --kv-caches weights,{sampling.kv_cache}")
    if not torch.cuda.is_available():
        raise UserError("bench_sample.py times the CUDA paths and needs a CUDA GPU; none is visible")
    device = torch.device("cuda")
    enable_tf32()
    if args.concurrent_batches:
        rows = [row for name in args.models
                for row in bench_concurrent(name, args.batch_sizes, args.concurrent_batches, sampling, args.reps, device)]
        print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.step} steps, CFG {args.cfg_scale} "
              f"{args.cfg_schedule}, {args.sample_schedule}, bf16, tokens only, medians of {args.reps}")
        print("| model | batch | batches at once | img/s | x one at a time | same tokens | peak GiB allocated |")
        print("|---|---|---|---|---|---|---|")
        for name, batch, count, rate, ratio, same, peak in rows:
            print(f"| {name} | {batch} | {count} | {rate:.1f} | {ratio:.2f}x | {same} | {peak:.2f} |")
        return
    vq = None
    if not args.no_decode:
        from tokenizer.vq_model import VQ_models

        vq = prepare_vq(VQ_models["VQ-16"](), device, PRECISIONS[args.vq_precision], compile_decoder=True)
    rows = []
    for name in args.models:
        rows += bench_model(name, args.batch_sizes, sampling, args.reps, vq, device, args.compile_layers, kv_caches)
        torch.cuda.empty_cache()  # the model of this size is gone once bench_model returns
        torch._dynamo.reset()  # --compile-layers: drop the parts of the last size (each size compiles its own)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.step} steps, "
          f"CFG {args.cfg_scale} {args.cfg_schedule}, {args.sample_schedule}, bf16, medians of {args.reps}, "
          f"VQ decode {'float32' if args.vq_precision == 'none' else args.vq_precision} compiled")
    print("| model | batch | path | img/s tokens | img/s with decode | peak GiB alone (allocated / reserved) | KV cache GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, batch, key, tok, e2e, peak, cache in rows:
        # nan: no VQ decode timed (--no-decode), or no memory figure for a ratio row
        ratio_row = key.endswith("/plain")
        fmt = lambda v: "-" if v != v else (f"{v:.2f}x" if ratio_row else f"{v:.1f}")
        gib = lambda v: "" if v != v else f"{v:.2f}"
        peak_text = "" if isinstance(peak, float) and peak != peak else str(peak)  # nan: a ratio row; None: no CUDA
        print(f"| {name} | {batch} | {key} | {fmt(tok)} | {fmt(e2e)} | {peak_text} | {gib(cache)} |")


if __name__ == "__main__":
    run_main(main)

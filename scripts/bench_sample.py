"""Sampling throughput: the reference loop (autoregressive/generate.py) against the CUDA-graph fast path.

Random bf16 weights (throughput does not depend on them; the head gets random weights so the tokens
vary), 64 steps, CFG 4.5 constant, arccos schedule. Repetitions of the two paths are interleaved and
the medians reported. Peaks are of sampling alone (the VQ weights, resident for the decode column, are
not counted). End-to-end adds the VQ-16 decode of the tokens as sample_c2i_ddp.py runs it by
default (float32 with TF32, decoder compiled; --vq-precision fp16 for the faster one).

    python -m scripts.bench_sample --models ARPG-L ARPG-XL ARPG-XXL --batch-sizes 64 256
"""
import argparse
import dataclasses
import statistics
import time

import torch

from autoregressive.fast_generate import FastSampler, make_sampler
from autoregressive.generate import generate
from autoregressive.models.arpg import ARPG_models
from autoregressive.sampling import SamplingConfig, add_sampling_args
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.device import enable_tf32
from autoregressive.weights import PRECISIONS, prepare_vq


def timed(fn):
    """Run fn once; return (result, seconds, peak bytes allocated since the call began)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated()


def build_model(name: str, device):
    torch.manual_seed(0)
    model = ARPG_models[name]().to(device=device, dtype=torch.bfloat16).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    return model


@torch.inference_mode()
def fused_logits_check(model, device) -> str:
    """One teacher-forced pass over random tokens: the bf16 logits of the eager layers and of the fused
    ones, each against the same model in float32 (max |difference|, share of equal top-1 tokens)."""
    import copy

    from autoregressive.fast_generate import compiled_layer_parts, eager_rounding

    config = model.config
    generator = torch.Generator(device).manual_seed(1)
    rows, n = 32, config.block_size
    slots = torch.rand(rows, n, device=device, generator=generator).argsort(1) + config.cls_token_num
    ids = torch.randint(0, config.vocab_size, (rows, n), device=device, generator=generator)
    ids[:, 0], slots[:, 0] = config.vocab_size + 1, 0  # class 0 first
    exact = copy.deepcopy(model).float().decode(ids, slots, slots, causal=True)
    eager = model.decode(ids, slots, slots, causal=True)
    parts = compiled_layer_parts(model)
    with eager_rounding(parts):
        fused = model.decode(ids, slots, slots, causal=True, layer_parts=parts)

    def against_float32(logits):
        top1 = (logits.argmax(-1) == exact.argmax(-1)).float().mean()
        return f"max |diff| {(logits - exact).abs().max():.3g}, same top-1 {100 * top1:.2f}%"

    return (f"logits of one teacher-forced pass vs float32 (std {exact.std():.3g}): eager bf16 "
            f"{against_float32(eager)}; fused bf16 {against_float32(fused)}")


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
    return f"decoding attention vs float32: Triton max |diff| {triton_error:.3g}, SDPA bf16 {sdpa_error:.3g}"


def bench_model(name, batch_sizes, sampling, reps, vq, device, fused=False):
    model = build_model(name, device)
    # The VQ weights stay resident for the decode column; the peaks are those of sampling alone.
    vq_bytes = sum(p.numel() * p.element_size() for p in vq.parameters()) if vq is not None else 0
    fast = FastSampler(model, fuse=fused)
    fast_key = "fused" if fused else "fast"
    # The reference loop, with the same fused layers when the fast path has them.
    reference, plain_key = make_sampler(model, use_fast=False, fuse=fused), "plain, fused" if fused else "plain"
    print(f"{name}: {decode_kernel_check(model, device)}", flush=True)
    if fused:
        print(f"{name}: {fused_logits_check(model, device)}", flush=True)
    rows = []
    for batch in batch_sizes:
        labels = torch.arange(batch, device=device) % model.config.num_classes
        grid = model.config.grid_size
        paths = {
            plain_key: lambda g: reference(labels, sampling, g),
            fast_key: lambda g: fast.generate(labels, sampling, generator=g),
        }
        greedy = dataclasses.replace(sampling, temperature=0.0)
        order = torch.randperm(model.config.block_size, device=device)
        fast_greedy = fast.generate(labels, greedy, orders=order)
        equal = reference(labels, greedy, None, orders=order) == fast_greedy
        if fused:
            eager_equal = generate(model, labels, greedy, orders=order) == fast_greedy
            print(f"{name} batch {batch}: greedy fused tokens equal to the eager layers' "
                  f"{100 * eager_equal.float().mean():.2f}%", flush=True)
        seeded = [path(torch.Generator(device).manual_seed(3)) for path in paths.values()]
        times = {key: [] for key in paths}
        decode_times, peaks = [], {key: 0.0 for key in paths}
        for key, path in paths.items():  # warm-up (graph capture for the fast path)
            tokens = path(torch.Generator(device).manual_seed(0))
        if vq is not None:  # warm-up (compile) of the decoder at this batch size
            with torch.inference_mode():
                vq.decode_code(tokens, shape=(batch, vq.config.codebook_embed_dim, grid, grid))
        for rep in range(reps):
            for key, path in paths.items():
                tokens, seconds, peak = timed(lambda: path(torch.Generator(device).manual_seed(rep)))
                times[key].append(seconds)
                peaks[key] = max(peaks[key], (peak - vq_bytes) / 2**30)
            if vq is not None:
                shape = (batch, vq.config.codebook_embed_dim, grid, grid)
                with torch.inference_mode():
                    _, seconds, _ = timed(lambda: vq.decode_code(tokens, shape=shape))
                decode_times.append(seconds)
        decode = statistics.median(decode_times) if decode_times else float("nan")
        for key in paths:
            token_s = statistics.median(times[key])
            rows.append((name, batch, key, batch / token_s, batch / (token_s + decode), peaks[key]))
        rows.append((name, batch, f"{fast_key}/plain", rows[-1][3] / rows[-2][3], rows[-1][4] / rows[-2][4],
                     float("nan")))
        print(f"{name} batch {batch}: greedy {fast_key} == {plain_key}: {bool(equal.all())} "
              f"({100 * equal.float().mean():.2f}% of tokens equal); sampled with the same seed, equal: "
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
    parser.add_argument("--fused", action="store_true", help="time the fused fast path (layers compiled: close to, "
                        "not equal to, the reference loop) instead of the exact one")
    args = add_sampling_args(parser, cfg_scale=4.5, cfg_schedule="constant").parse_args(argv)
    for flag, values in (("--batch-sizes", args.batch_sizes), ("--step", [args.step]), ("--reps", [args.reps])):
        for value in values:
            check_at_least(flag, value, 1)
    sampling = SamplingConfig.from_args(args)
    if not torch.cuda.is_available():
        raise UserError("bench_sample.py times the CUDA paths and needs a CUDA GPU; none is visible")
    device = torch.device("cuda")
    enable_tf32()
    vq = None
    if not args.no_decode:
        from tokenizer.vq_model import VQ_models

        vq = prepare_vq(VQ_models["VQ-16"](), device, PRECISIONS[args.vq_precision], compile_decoder=True)
    rows = []
    for name in args.models:
        rows += bench_model(name, args.batch_sizes, sampling, args.reps, vq, device, args.fused)
        torch.cuda.empty_cache()  # the model of this size is gone once bench_model returns
        torch._dynamo.reset()  # fused: compiled parts of the last size would count against the recompile limit
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.step} steps, "
          f"CFG {args.cfg_scale} {args.cfg_schedule}, {args.sample_schedule}, bf16, medians of {args.reps}, "
          f"VQ decode {'float32' if args.vq_precision == 'none' else args.vq_precision} compiled")
    print("| model | batch | path | img/s tokens | img/s with decode | peak GiB (sampling) |")
    print("|---|---|---|---|---|---|")
    for name, batch, key, tok, e2e, peak in rows:
        fmt = (lambda v: f"{v:.2f}x") if key.endswith("/plain") else (lambda v: f"{v:.1f}")
        print(f"| {name} | {batch} | {key} | {fmt(tok)} | {fmt(e2e)} | {'' if peak != peak else f'{peak:.2f}'} |")


if __name__ == "__main__":
    run_main(main)

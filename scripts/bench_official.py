"""Ours against the official code (github hp-l33/ARPG) in one process: training step and sampling, the
repetitions of the two interleaved, medians, peak memory. The official model is imported from a copy of
that repository given by --official-repo (not part of this project; it needs `einops`, and takes
`transformers` where installed), so the ratios to the official code are measured in the same run on the
same GPU. Sampling rows give the share of scripts/sampling_floor.py's floor they reach; --profile DIR adds
one profiled batch per sampling path (scripts/kernel_profile.py's report: where the time above the floor
goes).

    git clone https://github.com/hp-l33/ARPG /tmp/ARPG-official
    python -m scripts.bench_official --official-repo /tmp/ARPG-official --train-models ARPG-L --train-batch 128 \\
        --sample-models ARPG-L ARPG-XXL --sample-batches 64 256

Training, both sides: random codes, bf16 autocast, torch.compile, gradient clipping, fused AdamW with
weight decay on 2-D parameters (the official train_c2i.py's step); ours is `Trainer.optimizer_step` with
train_c2i.py's defaults (chunked loss), and beside it each of --precision-policies and of --mlp-kernels
(train_c2i.py's --mlp-kernel, under each listed policy but fp8's). Sampling, both
sides: random bf16 weights (the official --precision bf16), 64 steps, CFG 4.5 constant, arccos; theirs
is `Transformer.generate`, ours the CUDA-graph fast path (plus `--kv-caches` variants). Tokens only, no
VQ decode. Peak memory: a training
side's own state plus its step's transient peak (bench_train's count); a sampling path's alone
(bench_common.alone_peak_gib: run anew after the timing, allocated and reserved on top of what the other
paths hold).
"""
import argparse
import os
import statistics
import sys
from typing import Callable, Dict, List

import torch

from autoregressive.fast_generate import FastSampler
from autoregressive.models.arpg import ARPG_models
from autoregressive.sampling import SamplingConfig
from autoregressive.train.precision import parse_mlp_kernels, parse_policy_list, with_mlp_kernels
from autoregressive.utils.cli import RenamedFlag, check_at_least, run_main
from autoregressive.utils.device import enable_tf32, resolve_device, synchronize
from autoregressive.utils.dist import cleanup, init_distributed
from scripts.bench_common import alone_peak_gib, model_bytes, parse_kv_caches, random_model, timed
from scripts.bench_train import PolicyRun, start_run, time_sides, warm_up
from scripts.kernel_profile import profile_calls, report, write_report
from scripts.official_code import load_official
from scripts.sampling_floor import decoding_work

class OfficialTrainer:
    """The official train_c2i.py's optimizer step on its own model, behind Trainer's `optimizer_step`."""

    def __init__(self, model: torch.nn.Module, device: torch.device, compile_model: bool, lr: float = 1e-4):
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 5e-2}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")
        self.model, self.device = model, device
        self.train_model = torch.compile(model) if compile_model else model

    def optimizer_step(self, batches) -> torch.Tensor:
        (codes, labels), = batches
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            _, loss = self.train_model(codes, labels, targets=codes)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def start_official_run(official, name: str, batch: int, device: torch.device, compile_model: bool) -> PolicyRun:
    """Build and warm up (compile) the official model's step on random codes of ours' shape."""
    torch.manual_seed(0)
    model = official.ARPG_models[name]().to(device)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # as ours in bench_train: a zero head makes every loss log V
    codes = torch.randint(0, model.config.vocab_size, (batch, model.config.block_size), device=device)
    labels = torch.randint(0, model.config.num_classes, (batch,), device=device)
    synchronize(device)
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    run = PolicyRun({"model": name, "batch": batch, "side": "official"}, OfficialTrainer(model, device, compile_model),
                    step=[(codes, labels)])
    return warm_up(run, device, before)


def bench_training(official, name: str, batch: int, args, info) -> List[dict]:
    """Official and ours (exact policy, and each other policy asked for) on one model and batch,
    repetitions interleaved; with --one-at-a-time each side is built, timed and freed before the next
    (where the sides' trainers do not fit in the GPU's memory together)."""
    def ours(policy: str, mlp_kernel: str = "torch") -> PolicyRun:
        run = start_run(name, batch, "ddp", policy, args, info, mlp_kernel=mlp_kernel)
        run.result["side"] = ", ".join(["ours"] + [policy] * (policy != "exact") +
                                       [f"{mlp_kernel} MLP"] * (mlp_kernel != "torch"))
        return run

    sides = [lambda: start_official_run(official, name, batch, info.device, not args.no_compile)]
    policies = parse_policy_list(getattr(args, "precision_policies", "exact"))
    sides += [(lambda p: lambda: ours(p))(policy) for policy in policies]
    sides += [(lambda p, k: lambda: ours(p, k))(policy, kernel)
              for policy, kernel in with_mlp_kernels(policies, parse_mlp_kernels(getattr(args, "mlp_kernels", "")))]
    return time_sides(sides, name, batch, "training", args, info.device, lambda run: training_row(run, name, batch))


def training_row(run: PolicyRun, name: str, batch: int) -> dict:
    side = run.result["side"] + (f" (not run: {run.result['skipped']})" if "skipped" in run.result else "")
    return {"model": name, "batch": batch, "side": side, "img_s": statistics.median(run.rates) if run.rates else None,
            "peak_gib": max(run.peaks) / 2**30 if run.peaks else None}


def bench_sampling(official, name: str, batches: List[int], kv_caches: List[str], args, device) -> List[dict]:
    """The official generate() against our fast path (one per KV cache kind) on random bf16 weights."""
    theirs, ours = random_model(name, device, official.ARPG_models[name]), random_model(name, device)
    # CPU: the same steps, uncaptured. fused: the layers' cache-free parts compiled (close to, not equal to, eager).
    # One sampler per cache kind: a sampler keeps the graphs of its last settings only, so one shared sampler
    # would capture its graphs again at every call (it did, in the first GPU run: 34 img/s for L at batch 64).
    new_sampler = lambda: FastSampler(ours, use_graphs=device.type == "cuda", compile_layers=args.compile_layers)
    samplers = {kind: new_sampler() for kind in kv_caches}
    ours_name = "ours, compiled layers" if args.compile_layers else "ours"
    rows = []
    for batch in batches:
        labels = torch.arange(batch, device=device) % ours.config.num_classes
        settings = {kind: SamplingConfig(num_steps=args.step, cfg_scale=args.cfg_scale, cfg_schedule="constant",
                                         kv_cache=kind) for kind in kv_caches}
        paths: Dict[str, Callable] = {"official": lambda: theirs.generate(
            labels, guidance_scale=args.cfg_scale, cfg_schedule="constant", sample_schedule="arccos",
            num_iter=args.step)}
        cache_kinds = {"official": "weights"}  # each path's cache kind; the official cache is in the weights' dtype
        for kind, sampling in settings.items():
            key = f"{ours_name}, kv-cache {kind}"
            paths[key], cache_kinds[key] = (lambda k, s: lambda: samplers[k].generate(labels, s))(kind, sampling), kind
        for path in paths.values():  # warm-up: graph capture, kernel compilation
            path()
        times = {key: [] for key in paths}
        for _ in range(args.reps):
            for key, path in paths.items():
                times[key].append(timed(path)[1])
        # Each path's memory alone: the official generate() again, ours through a fresh sampler (its own
        # cache and graphs), each on top of what the others hold (alone_peak_gib)
        fresh = {"official": (paths["official"], model_bytes(theirs))}
        for kind, sampling in settings.items():
            fresh[f"{ours_name}, kv-cache {kind}"] = ((lambda s: lambda: new_sampler().generate(labels, s))(sampling),
                                                     model_bytes(ours))
        peaks = {key: alone_peak_gib(run_fresh, own_bytes) for key, (run_fresh, own_bytes) in fresh.items()}
        for key in paths:
            kind = cache_kinds[key]
            floor = decoding_work(ours, batch, settings[kind], cache_bytes_each=2 if kind == "weights" else 1)
            rows.append({"model": name, "batch": batch, "side": key, "img_s": batch / statistics.median(times[key]),
                         "peak_gib": peaks[key],
                         "floor_img_s": batch / floor.seconds})
            if args.profile:
                stem = f"{name}-b{batch}-" + "-".join("".join(c if c.isalnum() else " " for c in key).split())
                write_sampling_profile(paths[key], f"{name}, batch {batch}, {key}", stem, floor, args.profile, device)
    del samplers, new_sampler, theirs, ours
    # Each size compiles layer parts of its own (fast_generate.compiled_part): drop this size's, no longer used.
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def write_sampling_profile(path: Callable, title: str, stem: str, floor, out_dir: str, device: torch.device) -> None:
    """One more batch of a sampling path under torch.profiler: kernel time by kind, launches, busy against
    wall, beside the batch's floor; into out_dir, and printed."""
    result = profile_calls(path, 1, device)
    launches = sum(kernel.count for kernel in result.kernels)
    notes = [f"{launches} kernels (or CPU ops) per batch. Floor of the batch (scripts/sampling_floor.py, H100 "
             f"peaks): matmuls {1e3 * floor.matmul_seconds:.1f} ms ({floor.matmul_flops / 1e12:.1f} TFLOP), cache "
             f"reads {1e3 * floor.cache_seconds:.1f} ms ({floor.cache_bytes / 1e9:.1f} GB), logits "
             f"{1e3 * floor.logit_seconds:.1f} ms."]
    write_report(report(result, title, notes=notes), out_dir, stem)


def table(rows: List[dict], title: str) -> List[str]:
    """Markdown: one row per model, batch and side; "x official" divides by the official row's img/s;
    rows with a "floor_img_s" (sampling) add the share of scripts/sampling_floor.py's floor reached."""
    official = {(r["model"], r["batch"]): r["img_s"] for r in rows if r["side"] == "official"}
    floors = any("floor_img_s" in r for r in rows)
    extra = (" of the floor (H100 peaks) |", "---|") if floors else ("", "")
    peak_title = "peak GiB (sampling: allocated / reserved, alone)" if floors else "peak GiB"
    lines = [title, "", f"| model | batch | side | img/s (median) | x official | {peak_title} |{extra[0]}",
             f"|---|---|---|---|---|---|{extra[1]}"]
    for r in rows:
        base = official.get((r["model"], r["batch"]))
        ratio = f"{r['img_s'] / base:.2f}x" if r["img_s"] and base else "-"
        rate = f"{r['img_s']:.1f}" if r["img_s"] else ("-" if "not run" in r["side"] else "out of memory")
        peak = "-" if r["peak_gib"] is None else (
            f"{r['peak_gib']:.1f}" if isinstance(r["peak_gib"], float) else str(r["peak_gib"]))
        share = ""
        if floors:
            share = f" {100 * r['img_s'] / r['floor_img_s']:.0f}% of {r['floor_img_s']:.0f} img/s |" \
                if r["img_s"] and r.get("floor_img_s") else " - |"
        lines.append(f"| {r['model']} | {r['batch']} | {r['side']} | {rate} | {ratio} | {peak} |{share}")
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="a clone of https://github.com/hp-l33/ARPG")
    parser.add_argument("--train-models", nargs="*", default=["ARPG-L"], choices=list(ARPG_models))
    parser.add_argument("--train-batch", type=int, default=128, help="per GPU")
    parser.add_argument("--precision-policies", default="exact", help="comma-separated training policies of ours "
                        "(exact always): exact, bf16, fp8, fp8-rowwise")
    parser.add_argument("--mlp-kernels", default="", help="comma-separated opt-in MLP kernels of ours (quack), "
                        "each trained under every listed policy but fp8's, beside the official code")
    parser.add_argument("--sample-models", nargs="*", default=["ARPG-L"], choices=list(ARPG_models))
    parser.add_argument("--sample-batches", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--kv-caches", default="weights", help="comma-separated KV caches of our path: weights "
                        "(always), int8, fp8")
    parser.add_argument("--compile-layers", action="store_true", help="our sampling with the layers compiled (the "
                        "samplers' --compile-layers; scripts/check_precision.py's bf16-compiled-layers mode judges it)")
    parser.add_argument("--fused", dest="compile_layers", action=RenamedFlag, new_flag="--compile-layers", nargs=0,
                        const=True)
    parser.add_argument("--profile", metavar="DIR", default=None, help="after the timing, one more batch of every "
                        "sampling path under torch.profiler: kernel time by kind and launches, into DIR")
    parser.add_argument("--step", type=int, default=64)
    parser.add_argument("--cfg-scale", type=float, default=4.5)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="train eagerly (both sides)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="training: build, time and free each side in turn instead of interleaving their "
                             "repetitions (where the trainers do not fit in the GPU's memory together: ARPG-XXL "
                             "at batch 64 on 80 GB holds two at most)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="cpu only checks that the harness runs; timings mean something on a GPU")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    for flag, value in (("--train-batch", args.train_batch), ("--step", args.step), ("--steps", args.steps),
                        ("--reps", args.reps), *(("--sample-batches", b) for b in args.sample_batches)):
        check_at_least(flag, value, 1)
    kv_caches = parse_kv_caches(args.kv_caches)
    parse_policy_list(args.precision_policies)  # bad lists are refused before any loading
    parse_mlp_kernels(args.mlp_kernels)
    official = load_official(args.official_repo)
    device = resolve_device(args.device)
    if device.type == "cuda":
        enable_tf32()  # both official scripts turn TF32 on
    # bench_train's helpers read these
    args.chunked_loss, args.grad_checkpointing, args.check_loss = True, "none", False
    info = init_distributed(device.type)
    training, sampling = [], []
    for name in args.train_models:
        rows = bench_training(official, name, args.train_batch, args, info)
        # as the sampling rows below: each size's rows as soon as they exist
        print("\n".join(table(rows, f"\n{name} training (the full table follows at the end):")), flush=True)
        training += rows
    for name in args.sample_models:
        rows = bench_sampling(official, name, args.sample_batches, kv_caches, args, device)
        # each size's rows as soon as they exist, so a run cut short by a time limit keeps them
        print("\n".join(table(rows, f"\n{name} sampling (the full table follows at the end):")), flush=True)
        sampling += rows
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}, official code at {os.path.abspath(args.official_repo)}")
    if training:
        print("\n".join(table(training, f"Training, bf16 autocast, {'eager' if args.no_compile else 'compiled'}, "
                                        f"medians of {args.reps} x {args.steps} steps:")))
    if sampling:
        print("\n".join(table(sampling, f"\nSampling, bf16 weights, {args.step} steps, CFG {args.cfg_scale} constant, "
                                        f"arccos, tokens only, medians of {args.reps}:")))
    cleanup()
    sys.stdout.flush()


if __name__ == "__main__":
    run_main(main)

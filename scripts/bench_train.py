"""Training throughput on one GPU: the optimizer step that train_c2i.py runs (`Trainer.optimizer_step`:
forward, backward, gradient clipping, fused AdamW; without --ema) on random codes, bf16 autocast,
compiled. Prints, per model, batch, data-parallel mode and precision policy (each timed beside exact,
repetitions interleaved), img/s (median of the repetitions), peak memory and MFU (model FLOPs: recomputation not counted), and
checks numerics: the loss of one fixed batch (fixed orders, eval mode: no dropout) in bf16, eager and
compiled, against the eager float32 path.

    python -m scripts.bench_train --models ARPG-L --batch-sizes 128
    python -m scripts.bench_train --models ARPG-L,ARPG-XL,ARPG-XXL --batch-sizes 64,128 --modes ddp,fsdp
    python -m scripts.bench_train --models ARPG-XXL --batch-sizes 128 --chunked-loss --grad-checkpointing 32
    python -m scripts.bench_train --models ARPG-L --batch-sizes 128 --modes ddp,fsdp --precision-policies exact,bf16,fp8
    python -m scripts.bench_train --models ARPG-L --precision-policies exact,bf16 --profile results/profile
    python -m scripts.bench_train --models ARPG-XXL --batch-sizes 64 --precision-policies exact,fp8 --one-at-a-time

--profile DIR: after the timing, 3 more steps of each run under torch.profiler; DIR/<model>-b<batch>-<mode>-
<policy>.md gets the kernels' time by kind (matmul, attention, optimizer, ...), the costliest kernels and
the step's FLOP floor (scripts/kernel_profile.py); the same report is printed.

ddp at world size 1 is the compiled model itself (train_c2i.py wraps DDP only for several ranks);
fsdp is FSDP2 with every layer compiled and sharded over a one-process group.
"""
import argparse
import gc
import statistics
import time
from typing import Callable, List, Optional, Sequence

import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.train.config import TrainConfig, build_model
from autoregressive.train.loop import Trainer
from autoregressive.train.parallel import set_activation_memory_budget
from autoregressive.train.precision import check_policy, parse_policy_list
from autoregressive.train.precision import unavailable_reason as training_unavailable_reason
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.device import enable_tf32, synchronize
from autoregressive.utils.dist import DistInfo, cleanup, init_distributed, init_one_process_group
from scripts.bench_common import PEAK_BF16_TFLOPS
from scripts.kernel_profile import profile_calls, report, write_report


def peak_tflops() -> float:
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), float("nan"))


def flops_per_image(model) -> float:
    """Forward + backward model FLOPs of one image: 6 x (parameters used in matmuls) x tokens, plus
    the causal attention scores and weighted sums of every layer."""
    config = model.config
    matmul_params = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embeddings" not in name)
    tokens = config.block_size
    attention = config.n_layer * 2 * tokens * tokens * config.dim  # causal: half of 2 matmuls x 2 n^2 D
    return 6 * matmul_params * tokens + 3 * attention


def fixed_batch_loss(model, codes, labels, orders, autocast: bool) -> float:
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and codes.is_cuda):
        _, loss = model(codes, labels, targets=codes, orders=orders)
    model.train()
    return loss.item()


def unavailable_reason(policy: str, mode: str, device: torch.device, grad_checkpointing: str = "none",
                       mlp_kernel: str = "torch") -> Optional[str]:
    """Why `policy` (with `mlp_kernel`) cannot run in `mode` here (shown in its table row), or None."""
    try:
        check_policy(policy, mode, grad_checkpointing)
    except ValueError as error:
        return str(error)
    return training_unavailable_reason(policy, mlp_kernel, device)


class PolicyRun:
    """One policy's trainer and batch in a group, and what was measured for it."""

    def __init__(self, result: dict, trainer: Optional[Trainer] = None, step=None):
        self.result, self.trainer, self.step = result, trainer, step
        self.rates, self.peaks = [], []
        self.resident = 0  # bytes its trainer keeps between steps (weights, gradients, optimizer state)

    def out_of_memory(self) -> None:
        self.result["img_s"], self.trainer = None, None


def bench_group(name: str, batch: int, mode: str, policies: List[str], args, info: DistInfo) -> List[dict]:
    """Time every precision policy of `policies` on one model, batch and mode, from the same weights and
    batch; their repetitions interleave, so a slow spell of the machine hits them all alike. With
    --one-at-a-time each one's trainer is built, timed and freed before the next (where two trainers do not
    fit in the GPU's memory, as ARPG-XXL's at batch 64 on 80 GB)."""
    def read(run: PolicyRun) -> dict:
        result = measured(run)
        if run.trainer is not None and args.profile:
            write_profile(run, batch, args.profile, info.device)
        return result

    builders = [(lambda p: lambda: start_run(name, batch, mode, p, args, info))(policy) for policy in policies]
    return time_sides(builders, name, batch, mode, args, info.device, read)


def side_of(result: dict) -> str:
    """What a row is timed as: its precision policy, or the side a caller named (scripts/bench_quack.py)."""
    return result.get("side") or result["policy"]


def ready(run: PolicyRun, name: str, batch: int, start: float) -> PolicyRun:
    """Say that a side is built and compiled, and how long that took: the compilations before the first
    timed step are most of a short run, so a run cut off by a time limit still shows how far it got."""
    state = f"not run: {run.result['skipped']}" if "skipped" in run.result else "compiled and warmed up"
    print(f"{name} b{batch} {side_of(run.result)}: {state} in {time.perf_counter() - start:.0f} s", flush=True)
    return run


def time_interleaved(builders: Sequence[Callable[[], PolicyRun]], name: str, batch: int, what: str, args,
                     device: torch.device) -> List[PolicyRun]:
    """Build each run (saying when it is ready), then time them all with interleaved repetitions, so a slow
    spell of the machine hits them alike; each repetition is printed as it ends, so a run cut short by a
    time limit keeps what it measured. The caller reads the runs, then calls release()."""
    runs = []
    for build in builders:
        start = time.perf_counter()
        runs.append(ready(build(), name, batch, start))
    for rep in range(args.reps):
        for run in runs:
            if run.trainer is not None:
                time_steps(run, args.steps, batch, device)
        rates = ", ".join(f"{side_of(run.result)} {run.rates[-1]:.1f}" for run in runs if run.trainer is not None)
        print(f"{name} b{batch} {what} repetition {rep + 1}: img/s {rates}", flush=True)
    return runs


def release(device: torch.device) -> None:
    """Free what timed runs left behind (the caller has dropped them): memory and compiled graphs."""
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_sides(builders: Sequence[Callable[[], PolicyRun]], name: str, batch: int, what: str, args,
               device: torch.device, read: Callable[[PolicyRun], dict]) -> List[dict]:
    """Build the sides, time them with interleaved repetitions (with args.one_at_a_time, each side built,
    timed and freed before the next), turn each run into its row with `read`, free them."""
    groups = [[build] for build in builders] if args.one_at_a_time else [list(builders)]
    rows = []
    for group in groups:
        runs = time_interleaved(group, name, batch, what, args, device)
        rows += [read(run) for run in runs]
        del runs
        release(device)
    return rows


def measured(run: PolicyRun) -> dict:
    """The run's result with its median img/s and peak GiB (none where it was skipped or ran out of memory)."""
    if run.trainer is not None:
        run.result["img_s"] = statistics.median(run.rates)
        run.result["peak_gib"] = max(run.peaks) / 2**30 if run.peaks else None
    return run.result


def time_steps(run: PolicyRun, steps: int, batch: int, device: torch.device) -> None:
    """One repetition: `steps` optimizer steps of the run's trainer; appends img/s and peak memory (its
    own state plus the step's transient peak, so the other policies' trainers do not count)."""
    try:
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        start = time.perf_counter()
        for _ in range(steps):
            run.trainer.optimizer_step(run.step)
        synchronize(device)
        run.rates.append(steps * batch / (time.perf_counter() - start))
        if device.type == "cuda":
            run.peaks.append(run.resident + torch.cuda.max_memory_allocated() - before)
    except torch.cuda.OutOfMemoryError:
        run.out_of_memory()


def write_profile(run: PolicyRun, batch: int, out_dir: str, device: torch.device, steps: int = 3) -> None:
    """Profile `steps` more optimizer steps of the run; write the report into out_dir and print it."""
    r = run.result
    result = profile_calls(lambda: run.trainer.optimizer_step(run.step), steps, device)
    title = f"{r['model']}, batch {batch}, {r['mode']}, {r['policy']}"
    notes = []
    if device.type == "cuda":
        peak = peak_tflops()
        notes.append(f"Model FLOPs of a step: {r['flops'] * batch / 1e12:.1f} TFLOP, "
                     f"{1e3 * r['flops'] * batch / (peak * 1e12):.1f} ms at {peak:.0f} TFLOP/s (dense bf16 peak): "
                     "the step's floor.")
    stem = f"{r['model']}-b{batch}-{r['mode']}-{r['policy']}"
    write_report(report(result, title, notes=notes), out_dir, stem)


def start_run(name: str, batch: int, mode: str, policy: str, args, info: DistInfo,
              prepare: Optional[Callable[[torch.nn.Module], None]] = None, mlp_kernel: str = "torch") -> PolicyRun:
    """Build, wrap and warm up (compile) the trainer of one policy; the same seeded weights and random
    batch for every one. The fixed-batch loss check runs for every policy on its own compiled module, and
    in eager float32 and bf16 once, beside exact. prepare: changes the built model in place before the
    trainer compiles it (after the eager checks), as scripts/bench_quack.py swaps in other kernels.
    mlp_kernel: train_c2i.py's --mlp-kernel (training mode only, so the fixed-batch losses, read in
    evaluation mode, do not see it)."""
    device = info.device
    result = {"model": name, "batch": batch, "mode": mode, "policy": policy}
    reason = unavailable_reason(policy, mode, device, args.grad_checkpointing, mlp_kernel)
    if reason is not None:
        result["skipped"] = reason
        return PolicyRun(result)
    cfg = TrainConfig(code_path="", gpt_model=name, global_batch_size=batch, compile=not args.no_compile,
                      chunked_loss=args.chunked_loss, grad_checkpointing=args.grad_checkpointing,
                      data_parallel=mode, precision_policy=policy, num_workers=0, mlp_kernel=mlp_kernel)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head (the training init) makes every loss log V
    config = model.config
    codes = torch.randint(0, config.vocab_size, (batch, config.block_size), device=device)
    labels = torch.randint(0, config.num_classes, (batch,), device=device)
    orders = torch.rand(batch, config.block_size, device=device).argsort(1)
    result["flops"] = flops_per_image(model)
    if args.check_loss and policy == "exact":
        result["loss_fp32"] = fixed_batch_loss(model, codes, labels, orders, autocast=False)
        result["loss_bf16"] = fixed_batch_loss(model, codes, labels, orders, autocast=True)
    synchronize(device)
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    if prepare is not None:
        prepare(model)
    # Compiles and wraps (ddp) or shards (fsdp) the model as a training run does.
    trainer = Trainer(cfg, info, torch.utils.data.TensorDataset(codes, labels), model=model)
    if args.check_loss:
        result["loss_compiled"] = fixed_batch_loss(trainer.train_model, codes, labels, orders, autocast=True)
    return warm_up(PolicyRun(result, trainer, step=[(codes, labels)]), device, before)  # gradient accumulation 1


def warm_up(run: PolicyRun, device: torch.device, allocated_before: int) -> PolicyRun:
    """Three steps (compilation), then what the trainer keeps resident since `allocated_before`."""
    try:
        for _ in range(3):
            run.trainer.optimizer_step(run.step)
        synchronize(device)
    except torch.cuda.OutOfMemoryError:
        run.out_of_memory()
    if device.type == "cuda":
        run.resident = torch.cuda.memory_allocated() - allocated_before
    return run


def result_table(results: List[dict], peak: float, side_title: str = "precision policy") -> List[str]:
    """The markdown table: one row per model, batch, mode and side (side_of); "vs exact" divides by the
    exact side's img/s in the same model, batch and mode."""
    exact = {(r["model"], r["batch"], r["mode"]): r.get("img_s") for r in results if side_of(r) == "exact"}
    lines = [f"| model | batch / GPU | mode | {side_title} | img/s (median) | vs exact | peak GiB | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        head = f"| {r['model']} | {r['batch']} | {r['mode']} | {side_of(r)} |"
        if "skipped" in r:
            lines.append(f"{head} not run: {r['skipped']} | - | - | - |")
        elif r.get("img_s") is None:
            lines.append(f"{head} out of memory | - | - | - |")
        else:
            reference = exact.get((r["model"], r["batch"], r["mode"]))
            ratio = f"{r['img_s'] / reference:.2f}x" if reference else "-"
            peak_gib = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            mfu = r["img_s"] * r["flops"] / (peak * 1e12)
            lines.append(f"{head} {r['img_s']:.0f} | {ratio} | {peak_gib} | {100 * mfu:.1f}% |")
    return lines


def loss_lines(results: List[dict]) -> List[str]:
    """The fixed-batch losses: eager float32 and bf16 once (the exact side), each side's compiled module."""
    lines = []
    for r in results:
        where = f"{r['model']} b{r['batch']} {r['mode']}"
        if side_of(r) == "exact" and "loss_fp32" in r:
            lines.append(f"{where}: loss of a fixed batch: eager float32 {r['loss_fp32']:.5f}, "
                         f"eager bf16 {r['loss_bf16']:.5f}")
        if "loss_compiled" in r:
            lines.append(f"{where} {side_of(r)}: the training module's loss of it {r['loss_compiled']:.5f}")
    return lines


def positive_ints(flag: str, text: str):
    """'64,128' -> [64, 128], refused with the flag's name unless every item is an integer >= 1."""
    items = text.split(",")
    if not all(item.strip().isdigit() and int(item) >= 1 for item in items):
        raise UserError(f"{flag} must be comma-separated integers >= 1, got {text!r}")
    return [int(item) for item in items]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ARPG-L", help="comma-separated, from " + ", ".join(ARPG_models))
    parser.add_argument("--batch-sizes", default="128", help="comma-separated batch sizes per GPU")
    parser.add_argument("--modes", default="ddp", help="comma-separated: ddp, fsdp")
    parser.add_argument("--precision-policies", default="exact",
                        help="comma-separated: exact, bf16, fp8, fp8-rowwise (torchao, sm89+); each is timed "
                             "beside exact, repetitions interleaved")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--chunked-loss", action="store_true", help="cross-entropy without keeping the logits")
    parser.add_argument("--grad-checkpointing", default="none",
                        help="layers recomputed in the backward pass: none, all, self, cross or a number")
    parser.add_argument("--activation-memory-budget", type=float, default=None,
                        help="torch.compile's partitioner budget: below 1 it recomputes cheap ops to save memory")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="after the timing, profile 3 steps of each run: kernel time by kind into DIR")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="build, time and free one policy's trainer after another instead of interleaving "
                             "them (for models whose trainers do not fit in memory together); exact only "
                             "where listed")
    parser.add_argument("--no-check-loss", dest="check_loss", action="store_false",
                        help="skip the fixed-batch loss check (saves the memory of the float32 forward)")
    args = parser.parse_args(argv)
    batch_sizes = positive_ints("--batch-sizes", args.batch_sizes)
    check_at_least("--steps", args.steps, 1)
    check_at_least("--reps", args.reps, 1)
    unknown = [name for name in args.models.split(",") if name not in ARPG_models]
    unknown += [mode for mode in args.modes.split(",") if mode not in ("ddp", "fsdp")]
    if unknown:
        raise UserError(f"unknown --models / --modes {unknown}; models: {', '.join(ARPG_models)}; modes: ddp, fsdp")
    if not torch.cuda.is_available():
        raise UserError("bench_train.py times training on a CUDA GPU; none is visible")
    enable_tf32()
    if args.activation_memory_budget is not None:
        set_activation_memory_budget(args.activation_memory_budget)
    # One at a time, each policy runs alone, so exact is timed only where listed (another process may time
    # it on another GPU meanwhile, as ARPG-XXL's compilations take minutes each).
    modes = args.modes.split(",")
    policies = parse_policy_list(args.precision_policies, add_exact=not args.one_at_a_time)
    info = init_one_process_group("cuda") if "fsdp" in modes else init_distributed("cuda")
    results = []
    for name in args.models.split(","):
        for batch in batch_sizes:
            for mode in modes:
                started = time.perf_counter()
                group = bench_group(name, batch, mode, policies, args, info)
                results += group
                # Progress as each group ends: a run cut short by a time limit still reports what it measured.
                rates = ", ".join(f"{r['policy']} {r.get('img_s') or r.get('skipped', 'out of memory')}" for r in group)
                print(f"{name} b{batch} {mode} ({time.perf_counter() - started:.0f} s): img/s {rates}", flush=True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast, "
          f"{'eager' if args.no_compile else 'compiled'}, chunked loss {args.chunked_loss}, "
          f"grad checkpointing {args.grad_checkpointing}, activation memory budget {args.activation_memory_budget}")
    print("\n".join(result_table(results, peak_tflops()) + loss_lines(results)))
    cleanup()


if __name__ == "__main__":
    run_main(main)

"""Where a step's time goes: torch.profiler over a few calls of a function, the kernels grouped into kinds
(matmul, attention, optimizer, communication, copies and casts, fused Triton kernels, other), each kind's
time per call and share, the GPU's idle share, and the costliest kernels. On the CPU (no kernels) the
aten ops' self times stand in for kernels, which is what the tests run. A helper module (no command line) of
bench_train.py --profile and bench_official.py.
"""
import os
import time
from typing import Callable, List, NamedTuple, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from autoregressive.utils.device import synchronize

# First match wins; lower-case substrings of CUDA kernel names or, on the CPU, of aten op names.
KINDS = (
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm",
                "aten::_scaled_mm")),
    ("attention", ("flash", "fmha", "attention", "scaled_dot_product")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("communication", ("nccl", "gloo", "allreduce", "all_reduce", "reduce_scatter", "allgather", "all_gather")),
    ("fused (triton)", ("triton",)),  # before copies: inductor names its kernels after their ops (_to_copy)
    ("copies and casts", ("memcpy", "memset", "copy", "aten::to", "cast", "fill")),
)
OTHER = "other"


class Kernel(NamedTuple):
    name: str
    seconds: float  # over all profiled calls
    count: int


class Profile(NamedTuple):
    kernels: List[Kernel]  # costliest first
    calls: int
    wall_seconds: float  # over all profiled calls
    on_gpu: bool


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, keys in KINDS if any(key in lower for key in keys)), OTHER)


def _self_seconds(event, on_gpu: bool) -> float:
    if not on_gpu:
        return event.self_cpu_time_total / 1e6
    for attribute in ("self_device_time_total", "self_cuda_time_total"):  # the first: torch >= 2.4's name
        if hasattr(event, attribute):
            return getattr(event, attribute) / 1e6
    return 0.0


def profile_calls(fn: Callable[[], object], calls: int, device: torch.device) -> Profile:
    """Run fn `calls` times under the profiler (after whatever warm-up the caller did)."""
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as recorded:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        wall = time.perf_counter() - start
    kernels = []
    for event in recorded.key_averages():
        if on_gpu and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        seconds = _self_seconds(event, on_gpu)
        if seconds > 0:
            kernels.append(Kernel(event.key, seconds, event.count))
    kernels.sort(key=lambda kernel: kernel.seconds, reverse=True)
    return Profile(kernels, calls, wall, on_gpu)


def kind_seconds(result: Profile) -> dict:
    """Seconds per call of each kind, costliest first."""
    totals = {}
    for kernel in result.kernels:
        kind = kind_of(kernel.name)
        totals[kind] = totals.get(kind, 0.0) + kernel.seconds / result.calls
    return dict(sorted(totals.items(), key=lambda item: item[1], reverse=True))


def report(result: Profile, title: str, top: int = 12, notes: Sequence[str] = ()) -> List[str]:
    """Markdown: the kinds' table, busy against wall time, the `top` costliest kernels, then `notes`."""
    kinds = kind_seconds(result)
    busy = sum(kinds.values())
    wall = result.wall_seconds / result.calls
    what = "GPU kernels" if result.on_gpu else "CPU ops (self time)"
    lines = [f"### {title}", "",
             f"{what}: {1e3 * busy:.2f} ms busy per call of {1e3 * wall:.2f} ms wall "
             f"({100 * busy / wall:.0f}%; the rest: launch gaps, host work, waits), {result.calls} calls profiled", "",
             "| kind | ms per call | share of busy |", "|---|---|---|"]
    lines += [f"| {kind} | {1e3 * seconds:.2f} | {100 * seconds / busy:.1f}% |" for kind, seconds in kinds.items()]
    lines += ["", f"| costliest {what} | kind | ms per call | launches per call |", "|---|---|---|---|"]
    for kernel in result.kernels[:top]:
        name = kernel.name if len(kernel.name) <= 90 else kernel.name[:87] + "..."
        name = name.replace("|", "\\|").replace("`", "'")  # C++ template names inside a markdown cell
        lines.append(f"| `{name}` | {kind_of(kernel.name)} | {1e3 * kernel.seconds / result.calls:.3f} | "
                     f"{kernel.count / result.calls:g} |")
    return lines + ([""] + list(notes) if notes else [])


def write_report(lines: List[str], out_dir: str, stem: str) -> None:
    """A report into out_dir/stem.md, and printed (a run cut short still shows it)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)

"""What the benchmark scripts share (bench_sample.py, bench_sample_ddp.py, bench_official.py, bench_train.py,
bench_load.py, sampling_floor.py, bench_vq_decode.py): the hardware rates their floors are computed against, timing and
memory helpers, the random-weights model they time, a run of seeded batches through a sampler pool, the
--kv-caches list and a markdown table of result rows (check_precision.py's report too). A script imports
shared helpers from here, not from another script."""
import gc
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.sampling import KV_CACHE_DTYPES, RENAMED_KV_CACHES
from autoregressive.utils.cli import UserError, renamed_values

# Datasheet peaks (SXM parts), the floors' rates: dense bf16 tensor-core TFLOP/s, and H100 HBM3 bandwidth.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
H100_BYTES_PER_S = 3.35e12


def markdown_table(rows: List[dict]) -> List[str]:
    """Rows of results as a markdown table: a column per key in the order first seen, floats to 4
    significant digits, "-" where a row lacks the key."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda value: f"{value:.4g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(column, "-")) for column in columns) + " |" for row in rows]


def timed(fn):
    """Run fn once; return (result, seconds)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def pixel_difference(images, other) -> Tuple[int, float]:
    """(largest difference in grey levels, share of values that differ) between two uint8 image arrays of
    one shape, numpy or torch."""
    a, b = (np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.int16) for x in (images, other))
    diff = np.abs(a - b)
    return int(diff.max(initial=0)), float((diff > 0).mean())


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class AlonePeak(NamedTuple):
    """GiB one path needs on its own (see alone_peak_gib), counted two ways."""
    allocated: float  # tensors alive at once (CUDA graph pools count, as the capture allocates them)
    reserved: float  # what the caching allocator took from the GPU: also its fragmentation

    def __str__(self) -> str:
        return f"{self.allocated:.2f} / {self.reserved:.2f}"


def alone_peak_gib(run_fresh: Callable[[], object], own_bytes: int) -> Optional[AlonePeak]:
    """GiB one sampling path needs on its own, though other paths' state stays resident: run_fresh
    builds the path anew (a new sampler: its own KV cache and CUDA graphs, captured inside) and runs it
    once; the figures are the peaks allocated and reserved above what was held before (every model, the
    other samplers' caches and graph pools), plus own_bytes (the path's weights). Both, because they
    part ways: the official sampler grows its caches by concatenation at every step, and the allocator
    can reserve several times what it allocates. The reserved figure
    can also come out below the allocated one, where the path's tensors fill free room in segments the
    others keep reserved. None without CUDA."""
    if not torch.cuda.is_available():
        return None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    run_fresh()
    torch.cuda.synchronize()
    peak = AlonePeak((torch.cuda.max_memory_allocated() - allocated + own_bytes) / 2**30,
                     (torch.cuda.max_memory_reserved() - reserved + own_bytes) / 2**30)
    gc.collect()  # the fresh sampler's graphs and cache go back
    torch.cuda.empty_cache()
    return peak


def random_model(name: str, device, builder=None):
    """Random bf16 weights (seed 0) in eval mode; the head gets random weights too (a zero head, the
    training init, would make every token equally likely). builder: another constructor of `name`'s
    model (the official code's, in scripts/bench_official.py)."""
    torch.manual_seed(0)
    model = (builder or ARPG_models[name])().to(device=device, dtype=torch.bfloat16).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    return model


def pool_batches(pool, model, batch: int, num_batches: int, sampling, device,
                 each: Optional[Callable[[int, torch.Tensor], None]] = None) -> list:
    """The tokens of num_batches batches of `batch` through pool.imap, each labelled and seeded by its first
    sample as sample_c2i_ddp.py seeds it (global seed 0); each(first sample, tokens) is called on every
    batch as it comes, as sample_c2i_ddp.py hands batches to its VQ decoder."""
    from autoregressive.sampling import batch_generator

    def labels(first: int) -> torch.Tensor:
        return torch.arange(first, first + batch, device=device) % model.config.num_classes

    jobs = ((first, (labels(first), sampling, batch_generator(device, 0, first)), {})
            for first in range(0, num_batches * batch, batch))
    out = []
    for first, tokens in pool.imap(jobs):
        if each is not None:
            each(first, tokens)
        out.append(tokens)
    return out


def parse_kv_caches(text: str):
    """--kv-caches: cache kinds (SamplingConfig.kv_cache), weights first and always (the baseline)."""
    kinds = [renamed_values("--kv-caches", RENAMED_KV_CACHES)(kind) for kind in text.split(",") if kind]
    unknown = [kind for kind in kinds if kind not in KV_CACHE_DTYPES]
    if unknown:
        raise UserError(f"unknown KV cache {', '.join(unknown)} in --kv-caches; choose from {', '.join(KV_CACHE_DTYPES)}")
    return tuple(dict.fromkeys(["weights", *kinds]))

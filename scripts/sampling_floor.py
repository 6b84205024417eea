"""The least time one sampling batch can take: the work the decoding plan fixes, over a GPU's peak rates.

Per step of the plan (autoregressive/generate.py's plan_steps, rows = 2 x batch under guidance):
- matmuls: 2 FLOPs per weight per token, fed tokens through the self-attention layers and the shared
  key/value projection, the step's targets through the cross-attention layers and the head; every
  weight is read once per step. Their floor is the larger of FLOPs / peak and weight bytes / bandwidth.
- attention: every self-attention layer reads its own cache, every cross-attention layer the shared
  set, each of (cached + fed) positions, keys and values, once (plus its few FLOPs, which never bind).
- logits: the head's float32 logits written once and read once (guidance, softmax, the draw).
These run one after another on one stream, so the floor of a step is the sum of the three. Whatever a
measured batch takes beyond it is launch gaps, norms, RoPE, SwiGLU, the cache writes, and kernels short
of the peak rates; docs/speed.md ("Floors") reads the gap.

    python -m scripts.sampling_floor --models ARPG-L ARPG-XL ARPG-XXL --batch-sizes 64 256
    python -m scripts.sampling_floor --measure     # at the rates this GPU reaches, not its datasheet's
"""
import argparse
import statistics
import time
from typing import NamedTuple, Tuple

import torch

from autoregressive.generate import plan_steps
from autoregressive.kernels.codes import KV_CODES
from autoregressive.models.arpg import ARPG_models
from autoregressive.sampling import SamplingConfig, step_sizes
from autoregressive.utils.cli import UserError, run_main
from autoregressive.utils.device import synchronize
from scripts.bench_common import H100_BYTES_PER_S, PEAK_BF16_TFLOPS

H100_BF16_FLOPS = PEAK_BF16_TFLOPS["H100"] * 1e12


class Work(NamedTuple):
    matmul_flops: float
    weight_bytes: float  # read once per step, summed over the steps
    cache_bytes: float
    logit_bytes: float
    matmul_seconds: float  # per step max(FLOPs / peak, weight bytes / bandwidth), summed
    cache_seconds: float
    logit_seconds: float

    @property
    def seconds(self) -> float:
        return self.matmul_seconds + self.cache_seconds + self.logit_seconds


def linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def decoding_work(model, batch: int, sampling: SamplingConfig, flops_per_s: float = H100_BF16_FLOPS,
                  bytes_per_s: float = H100_BYTES_PER_S, weight_bytes_each: int = 2, cache_bytes_each: int = 2,
                  logit_bytes_each: int = 4) -> Work:
    """The work of one batch of class-conditional sampling (no known tokens). cache_bytes_each: 2 for a
    bf16 cache, 1 for FP8 codes (their float32 scales, 4 bytes a vector, are added)."""
    config, layers = model.config, model.layers
    rows = 2 * batch if sampling.uses_guidance else batch
    self_weights = linear_weights(layers.self_dec) + layers.to_kv.weight.numel()
    cross_weights, head_weights = linear_weights(layers.cross_dec), model.head.weight.numel()
    num_self, num_cross, dim = len(layers.self_dec), len(layers.cross_dec), config.dim
    # a cached vector: dim values of cache_bytes_each, plus one float32 scale per head where quantised
    vector_bytes = dim * cache_bytes_each + (4 * config.n_head if cache_bytes_each == 1 else 0)
    sizes = step_sizes(config.block_size, sampling.num_steps, sampling.sample_schedule)
    flops = weight_bytes = matmul_seconds = cache_bytes = logit_bytes = 0.0
    for step in plan_steps(config.cls_token_num, 0, sizes, sampling):
        step_flops = 2 * rows * (step.fed * self_weights + step.size * (cross_weights + head_weights))
        step_weight_bytes = weight_bytes_each * (self_weights + cross_weights + head_weights)
        flops, weight_bytes = flops + step_flops, weight_bytes + step_weight_bytes
        matmul_seconds += max(step_flops / flops_per_s, step_weight_bytes / bytes_per_s)
        positions = step.cache_length + step.fed  # what every layer's attention reads this step
        cache_bytes += rows * (num_self + num_cross) * 2 * positions * vector_bytes
        logit_bytes += 2 * rows * step.size * config.vocab_size * logit_bytes_each
    return Work(flops, weight_bytes, cache_bytes, logit_bytes, matmul_seconds, cache_bytes / bytes_per_s,
                logit_bytes / bytes_per_s)


def measure_ceilings(device: torch.device, copy_bytes: int = 2 << 30, matmul_size: int = 8192,
                     reps: int = 10) -> Tuple[float, float]:
    """(FLOP/s, bytes/s) this device reaches: a bf16 matmul of matmul_size cubed, and a device-to-device
    copy of copy_bytes (counted as read plus written), medians of `reps` after a warm-up. Floors at these
    rates say what the hardware gives in practice, where the datasheet's are a bound no kernel meets."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
    b = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
    source = torch.randn(copy_bytes // 4, device=device)
    target = torch.empty_like(source)

    def median_seconds(fn) -> float:
        fn()
        times = []
        for _ in range(reps):
            synchronize(device)
            started = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    flops = 2 * matmul_size ** 3 / median_seconds(lambda: a @ b)
    bytes_per_s = 2 * source.numel() * 4 / median_seconds(lambda: target.copy_(source))
    return flops, bytes_per_s


def cache_code_sizes() -> dict:
    """The quantised caches by bytes per code, one row per size: {"int8/fp8": 1}; the floor depends only on it."""
    kinds_by_size = {}
    for kind, code in KV_CODES.items():
        kinds_by_size.setdefault(code.dtype.itemsize, []).append(kind)
    return {"/".join(kinds): size for size, kinds in kinds_by_size.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ARPG-L", "ARPG-XL", "ARPG-XXL"], choices=list(ARPG_models))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--step", type=int, default=64)
    parser.add_argument("--tflops", type=float, default=H100_BF16_FLOPS / 1e12, help="matmul peak, TFLOP/s")
    parser.add_argument("--tbps", type=float, default=H100_BYTES_PER_S / 1e12, help="memory bandwidth, TB/s")
    parser.add_argument("--measure", action="store_true", help="use the rates this machine's GPU reaches (a bf16 "
                        "8192^3 matmul, a 2 GiB copy) instead of --tflops and --tbps")
    args = parser.parse_args(argv)
    sampling = SamplingConfig(num_steps=args.step, cfg_scale=4.5, cfg_schedule="constant")
    flops_per_s, bytes_per_s = args.tflops * 1e12, args.tbps * 1e12
    source = "peaks"
    if args.measure:
        if not torch.cuda.is_available():
            raise UserError("--measure needs a CUDA GPU (it times a matmul and a copy there)")
        flops_per_s, bytes_per_s = measure_ceilings(torch.device("cuda"))
        source = f"measured on {torch.cuda.get_device_name()}"
    print(f"{args.step} steps, CFG, arccos; {source}: {flops_per_s / 1e12:.0f} TFLOP/s, {bytes_per_s / 1e12:.2f} TB/s; "
          "ms per batch")
    print("| model | batch | cache | matmuls ms (TFLOP) | attention ms (GB of cache) | logits ms | floor ms | "
          "img/s at the floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        with torch.device("meta"):
            model = ARPG_models[name]()
        for batch in args.batch_sizes:
            for cache, cache_bytes_each in (("bf16", 2), *cache_code_sizes().items()):
                work = decoding_work(model, batch, sampling, flops_per_s, bytes_per_s,
                                     cache_bytes_each=cache_bytes_each)
                print(f"| {name} | {batch} | {cache} | {1e3 * work.matmul_seconds:.0f} ({work.matmul_flops / 1e12:.0f}) | "
                      f"{1e3 * work.cache_seconds:.0f} ({work.cache_bytes / 1e9:.0f}) | {1e3 * work.logit_seconds:.0f} | "
                      f"{1e3 * work.seconds:.0f} | {batch / work.seconds:.0f} |")


if __name__ == "__main__":
    run_main(main)

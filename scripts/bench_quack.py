"""Training throughput with quack-kernels (github Dao-AILab/quack) in our step: its SwiGLU MLP, whose GEMMs
apply the activation and its derivative in their epilogues, and its RMSNorm, each swapped into the model
in place of ours, beside our exact step: bench_train's trainer, compilation and timing, repetitions
interleaved, the fixed-batch loss of each side's compiled module beside exact's eager losses.

    python -m scripts.bench_quack --models ARPG-L --batch-sizes 128 --variants exact,mlp,mlp+norm
    python -m scripts.bench_quack --models ARPG-XXL --batch-sizes 64 --variants exact,mlp --one-at-a-time
    python -m scripts.bench_quack --models ARPG-L --variants exact,mlp,bf16,bf16+mlp --tuned

quack needs a Hopper or Blackwell GPU and NVIDIA's CUTLASS DSL (`pip install quack-kernels
nvidia-cutlass-dsl[cu13]`, or [cu12]), installed in a site-packages folder
(autoregressive/kernels/quack_mlp.py says why); it is not a dependency of this project. The MLP is the one
training uses with `--mlp-kernel quack`; the RMSNorm swap is this benchmark's alone. Its GEMMs are used
untuned (one default configuration each) unless --tuned, which autotunes them at the first call of each
shape, as training does.
"""
import argparse
import time
import types
from typing import Callable, List, NamedTuple, Sequence

import torch

from autoregressive.kernels import quack_mlp
from autoregressive.models.arpg import ARPG_models, FeedForward, RMSNorm
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.device import enable_tf32
from autoregressive.utils.dist import DistInfo, cleanup, init_distributed
from scripts import bench_train

PARTS = ("mlp", "norm")
# Training policies a side may run under beside quack's parts (tensor-wise and row-wise float8 convert the
# MLP's Linear layers themselves).
POLICIES = ("exact", "bf16")


class Variant(NamedTuple):
    policy: str  # --precision-policy of the side
    parts: frozenset  # which of PARTS it takes from quack


def parse_variants(text: str) -> List[Variant]:
    """'exact,mlp,bf16+mlp+norm' -> each side's policy (exact unless a token names another of POLICIES) and
    the PARTS it takes from quack."""
    variants = []
    for item in text.split(","):
        tokens = [token for token in item.split("+") if token != "exact"]
        policies = [token for token in tokens if token in POLICIES]
        parts = frozenset(token for token in tokens if token not in POLICIES)
        if item == "" or "" in tokens or len(policies) > 1 or not parts <= set(PARTS):
            raise UserError(f"--variants: {item!r} is not 'exact' or a '+'-joined set of {', '.join(PARTS)}, with "
                            f"at most one policy of {', '.join(POLICIES)}")
        variants.append(Variant(policies[0] if policies else "exact", parts))
    return variants


def variant_name(variant: Variant) -> str:
    tokens = ([variant.policy] if variant.policy != "exact" else []) + [part for part in PARTS if part in variant.parts]
    return "+".join(tokens) or "exact"


def load_quack(device: torch.device) -> types.SimpleNamespace:
    """quack's MLP (as training calls it) and RMSNorm functions, or one line saying what is missing."""
    reason = quack_mlp.unavailable_reason(device)
    if reason is not None:
        raise UserError(f"bench_quack.py {reason}")
    try:
        from quack.rmsnorm import rmsnorm
    except ImportError as error:
        raise UserError(f"quack-kernels does not import ({error}); install it with its CUTLASS DSL: "
                        f"{quack_mlp.INSTALL}") from error
    return types.SimpleNamespace(swiglu_mlp=quack_mlp.swiglu_mlp, rmsnorm=rmsnorm)


def use_quack(model: torch.nn.Module, parts: frozenset, kernels, tuned: bool = False) -> int:
    """Route the model's FeedForward and RMSNorm modules in `parts` through quack's functions (`kernels`:
    load_quack's), in place, in every mode; returns how many modules were changed."""

    def mlp_forward(ffn, x):
        return kernels.swiglu_mlp(x, ffn.w13.weight, ffn.w2.weight, tuned=tuned)

    def norm_forward(norm, x):
        # rounded once to the matmul's dtype, as ours is when autocast casts it for the next Linear
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        return kernels.rmsnorm(x, norm.weight, eps=norm.eps, out_dtype=out_dtype)

    changed = 0
    for module in model.modules():
        forward = {FeedForward: mlp_forward if "mlp" in parts else None,
                   RMSNorm: norm_forward if "norm" in parts else None}.get(type(module))
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            changed += 1
    return changed


def run_variants(name: str, batch: int, variants: Sequence[Variant], args, info: DistInfo, kernels) -> List[dict]:
    """Every variant's trainer from the same weights and batch, timed with interleaved repetitions (one
    after another with --one-at-a-time), then freed; one result per variant (bench_train.time_sides)."""
    def builder(variant: Variant) -> Callable[[], bench_train.PolicyRun]:
        def build():
            run = bench_train.start_run(name, batch, "ddp", variant.policy, args, info,
                                        prepare=lambda model: use_quack(model, variant.parts, kernels, args.tuned))
            run.result["side"] = variant_name(variant)
            return run
        return build

    return bench_train.time_sides([builder(variant) for variant in variants], name, batch, "ddp", args, info.device,
                                  bench_train.measured)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ARPG-L", help="comma-separated, from " + ", ".join(ARPG_models))
    parser.add_argument("--batch-sizes", default="128", help="comma-separated batch sizes")
    parser.add_argument("--variants", default="exact,mlp,mlp+norm",
                        help="comma-separated: exact, or quack's parts joined by '+' (" + ", ".join(PARTS) + "), "
                             "with a policy other than exact if one is named: " + ", ".join(POLICIES[1:]))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tuned", action="store_true", help="let quack autotune its GEMMs at each new shape")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="build, time and free one variant after another (models whose trainers do not fit "
                             "in memory together)")
    parser.add_argument("--no-check-loss", dest="check_loss", action="store_false",
                        help="skip the fixed-batch loss check (saves the memory of the float32 forward)")
    args = parser.parse_args(argv)
    variants = parse_variants(args.variants)
    batch_sizes = bench_train.positive_ints("--batch-sizes", args.batch_sizes)
    check_at_least("--steps", args.steps, 1)
    check_at_least("--reps", args.reps, 1)
    unknown = [name for name in args.models.split(",") if name not in ARPG_models]
    if unknown:
        raise UserError(f"unknown --models {unknown}; models: {', '.join(ARPG_models)}")
    if not torch.cuda.is_available():
        raise UserError("bench_quack.py times training with quack's CUDA kernels; no CUDA GPU is visible")
    kernels = load_quack(torch.device("cuda", torch.cuda.current_device()))
    # bench_train's options, at bench_train's defaults: compiled, the plain loss (train_c2i.py's default chunked
    # loss runs at its speed: docs/training.md), no recomputation, no profile
    args.no_compile, args.chunked_loss, args.grad_checkpointing, args.profile = False, False, "none", None
    enable_tf32()
    info = init_distributed("cuda")
    results = []
    for name in args.models.split(","):
        for batch in batch_sizes:
            started = time.perf_counter()
            results += run_variants(name, batch, variants, args, info, kernels)
            print(f"{name} b{batch}: done in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast, compiled, quack "
          f"{'tuned' if args.tuned else 'untuned'}")
    print("\n".join(bench_train.result_table(results, bench_train.peak_tflops(), side_title="side (policy+quack's parts)")
                    + bench_train.loss_lines(results)))
    cleanup()


if __name__ == "__main__":
    run_main(main)

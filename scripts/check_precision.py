"""Does quality hold under the opt-in precision policies (training) and sampling modes? Runs without the
released weights, on a learnable synthetic code set made here (`PrototypeCodes`): one random grid of
square blocks per class, each block its own code (its prototype); a sample is its class's prototype, shifted cyclically at random
(unless the model has learned absolute positions, as ARPG-digits), with a fraction of the positions
redrawn. No loss goes below the entropy of one token given class and shift, far below ln(V) (loss_floor).

Training: the model is trained under every policy (`--precision-policies`) from the same seed and data
order with train_c2i.py's own step (Trainer.optimizer_step), plus exact from the next seed (and from more
seeds with --exact-seeds): the run-to-run difference that the policies are judged against, sqrt(2) x the
standard deviation of the exact runs' held-out losses (with two runs, their difference). Per-step losses
go to losses.png.

Sampling: the exact run's weights, in each sampling mode (SAMPLING_MODES: float32 without TF32 as the
reference, bf16 autocast, TF32, bf16 and fp16 weights, bf16 weights with an FP8 KV cache): next-token
distributions on a held-out batch against float32 (mean KL(float32 || mode), top-1 agreement), and the
share of generated samples that match their class prototype. The distributions are read as sampling
reads them, through the KV cache (in the mode's cache kind), decoding the held-out tokens in fixed
orders with the sampling steps, each step feeding the true tokens of the last (no guidance); the float32
reference is read the same way. Training runs with TF32, as train_c2i.py.

Pass rules (TOLERANCE = 2):
- a training policy: its held-out loss is within 2x exact's run-to-run difference of exact's, and
  its samples' prototype match share is within noise of exact's (see within_noise). A run has learned
  the set when its held-out loss is below halfway from the class code-frequency plateau (plateau_loss)
  to the floor; until both exact runs have, the policies are "inconclusive" (their difference is when
  each left the plateau), and a policy run that has not fails;
- a sampling mode: its KL and its top-1 disagreement are within 2x those of its yardstick mode (bf16
  autocast, the exact recipe's own numerics; for int8-kv and fp8-kv, bf16: the same weights with a bf16
  cache), and
  its match share is within noise of float32's.

    python -m scripts.check_precision --precision-policies exact,bf16,fp8 --out-dir results/check-precision
    python -m scripts.check_precision --precision-policies exact --mlp-kernels quack --sampling-modes none

--mlp-kernels: each policy that can take it also trains with each opt-in MLP kernel (train_c2i.py's
--mlp-kernel), judged as a policy is (runs named "exact + quack MLP", "bf16 + quack MLP"; not fp8's).

With --parallel N the training runs go to N processes at once, each on a GPU of its own. Every finished
run is saved under <out-dir>/finished/; --resume reads those saved under the same settings instead of
training them again (a check cut short by a time limit goes on where it stopped).
The parts live in scripts/precision_check/ (data, modes, measure, judge, run, finished, parallel, report).
"""
import argparse
import json
import os
import sys
from typing import List, Optional

import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.train.precision import PRECISION_POLICIES, parse_mlp_kernels, parse_policy_list
from autoregressive.utils.cli import RenamedFlag, UserError, check_at_least, run_main
from autoregressive.utils.dist import cleanup, init_distributed, init_one_process_group
from scripts.precision_check.modes import SAMPLING_MODES
from scripts.precision_check.parallel import run_in_parallel
from scripts.precision_check.report import report
from scripts.precision_check.run import run_check


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpt-model", choices=list(ARPG_models), default="ARPG-L")
    parser.add_argument("--precision-policies", default=",".join(PRECISION_POLICIES),
                        help="comma-separated training policies, each trained beside exact")
    parser.add_argument("--mlp-kernels", default="", help="comma-separated opt-in MLP kernels (quack), each trained "
                        "under every listed policy but fp8's, beside exact")
    parser.add_argument("--sampling-modes", default=",".join(SAMPLING_MODES),
                        help=f"comma-separated, from {', '.join(SAMPLING_MODES)}; or none (training only)")
    parser.add_argument("--vocab-size", type=int, default=16384)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--grid", type=int, default=16, help="codes per side of a sample (16: 256 tokens)")
    parser.add_argument("--regions", type=int, default=4, help="blocks per side of a prototype, each one code "
                        "(it must divide --grid; 0 or --grid: one code per position, which ARPG-L did not learn "
                        "in 300 steps)")
    parser.add_argument("--resample-fraction", type=float, default=0.25,
                        help="share of a sample's positions redrawn from its class prototype")
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per training run (ARPG-L left the "
                        "class code-frequency plateau between step 200 and past 350 at --lr 6e-4, by seed)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--exact-seeds", type=int, default=2, help="exact runs from successive seeds, whose spread "
                        "is the run-to-run difference the policies are judged against (2: one difference, which "
                        "varies from check to check; more steadies the yardstick)")
    parser.add_argument("--eval-batch", type=int, default=64, help="held-out samples for the next-token figures")
    parser.add_argument("--samples-per-class", type=int, default=16, help="generated samples per class")
    parser.add_argument("--sample-batch", type=int, default=64, help="samples generated at once")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="decoding steps per generated sample (default: one token a step, so the first token "
                             "fixes the shift the others follow; the tokens of one parallel step are drawn "
                             "independently, each fixing a shift of its own)")
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--no-compile", action="store_true", help="train eagerly (CUDA compiles by default)")
    parser.add_argument("--compile-layers-backend", default="inductor",
                        help="torch.compile backend of the bf16-compiled-layers sampling mode "
                             "(the CPU tests: eager or aot_eager)")
    parser.add_argument("--fuse-backend", dest="compile_layers_backend", action=RenamedFlag,
                        new_flag="--compile-layers-backend")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out-dir", default="results/check-precision")
    parser.add_argument("--resume", action="store_true", help="read the training runs that an earlier check with "
                        "the same settings finished (<out-dir>/finished/) instead of training them again")
    parser.add_argument("--parallel", type=int, default=1, help="training runs at once, each in a process of its "
                        "own on a GPU of its own (a 4-GPU machine runs exact, its next seed, bf16 and fp8 together)")
    parser.add_argument("--only-run", default=None, help=argparse.SUPPRESS)  # a --parallel child: this run alone
    parser.add_argument("--run-file", default=None, help=argparse.SUPPRESS)  # where the child writes its result
    return parser


def check_args(args) -> None:
    if not 0 < args.resample_fraction < 1:
        raise UserError(f"--resample-fraction must be in (0, 1), got {args.resample_fraction}")
    check_at_least("--exact-seeds", args.exact_seeds, 2)
    for name in ("steps", "batch_size", "eval_batch", "samples_per_class", "sample_batch", "num_steps", "parallel"):
        check_at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    regions = args.regions or args.grid
    check_at_least("--regions", regions, 1)
    if args.grid % regions:
        raise UserError(f"--regions {regions} does not divide --grid {args.grid}: a prototype is --regions blocks "
                        "a side")
    if args.vocab_size < regions ** 2:
        raise UserError(f"--vocab-size {args.vocab_size} is smaller than the {regions ** 2} distinct codes of a "
                        f"--regions {regions} prototype")
    parse_mlp_kernels(args.mlp_kernels)
    if args.warmup_steps > args.steps:
        raise UserError(f"--warmup-steps {args.warmup_steps} is more than --steps {args.steps}")


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    check_args(args)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.parallel > 1:
        report(args, *run_in_parallel(args, argv))
        return
    bf16 = "bf16" in parse_policy_list(args.precision_policies)
    info = init_one_process_group(args.device) if bf16 else init_distributed(args.device)
    training, sampling, curves = run_check(args, info, args.only_run)
    if args.run_file:
        with open(args.run_file + ".tmp", "w") as file:
            json.dump({"training": training, "sampling": sampling, "curves": curves}, file)
        os.replace(args.run_file + ".tmp", args.run_file)  # whole or absent
    else:
        report(args, training, sampling, curves)
    cleanup()


if __name__ == "__main__":
    run_main(main)

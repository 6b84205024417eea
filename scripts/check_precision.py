"""Does quality hold under the opt-in precision policies (training) and sampling modes? Runs without the
released weights, on a learnable synthetic code set made here (`PrototypeCodes`): one random grid of
square blocks per class, each block its own code (its prototype); a sample is its class's prototype, shifted cyclically at random
(unless the model has learned absolute positions, as ARPG-digits), with a fraction of the positions
redrawn. No loss goes below the entropy of one token given class and shift, far below ln(V) (loss_floor).

Training: the model is trained under every policy (`--precision-policies`) from the same seed and data
order with train_c2i.py's own step (Trainer.optimizer_step), plus exact once more from another seed: the
run-to-run difference that the policies are judged against. Per-step losses go to losses.png.

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
    python -m scripts.check_precision --precision-policies exact --kernels liger-ce,liger --sampling-modes none

--kernels: the exact policy also trains under each opt-in kernel set (autoregressive/train/kernels.py),
judged as a policy is (its run is named "exact + <set>").

With --parallel N the training runs go to N processes at once, each on a GPU of its own (about 7 minutes
on four H100s against 18 on one, 2026-11-28).
"""
import argparse
import contextlib
import copy
import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from autoregressive.fast_generate import eager_rounding, fusion, reference_sampler
from autoregressive.models.arpg import ARPG_models
from autoregressive.train.config import TrainConfig, build_model
from autoregressive.train.loop import Trainer
from autoregressive.train.kernels import kernels_unavailable_reason, parse_kernel_list
from autoregressive.train.precision import FLOAT8_RECIPES, PRECISION_POLICIES, fp8_unavailable_reason, parse_policy_list
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.dist import DistInfo, cleanup, free_port, init_distributed, init_one_process_group

TOLERANCE = 2.0


class PrototypeCodes(torch.utils.data.Dataset):
    """Sample i: class i mod num_classes's prototype, shifted cyclically by a random (rows, columns) if
    `shift`, then with each position redrawn uniformly from the vocabulary with probability
    resample_fraction; a function of (seed, i) only. Items: ((grid**2,) long codes, class).

    A prototype is a grid x grid arrangement of regions x regions square blocks, each block one code,
    all distinct within the class (regions = grid: every position its own code). The shift matches what
    a model without absolute positions can generate: ARPG's 2-D RoPE is relative, so nothing tells it
    where the first token it places sits; the others follow that token's shift. Blocks of several
    positions make the set learnable in a few hundred steps by a model with relative positions only: a
    target's nearest known tokens mostly hold its code. With one code per position (regions = grid) the
    code must be looked up from a neighbour's code and offset, and ARPG-L sat at the class's code
    frequencies (loss 7.13 of ln V 9.70) for all of its 300 steps (H100, 2026-11-27), as ARPG-tiny
    did for 800 steps on the CPU, where 4 x 4 blocks of 4 x 4 broke through by step 550."""

    def __init__(self, num_classes: int, grid: int, vocab_size: int, resample_fraction: float, num_samples: int,
                 seed: int, shift: bool = True, regions: Optional[int] = None):
        regions = regions or grid
        if grid % regions:
            raise ValueError(f"--regions {regions} does not divide --grid {grid}")
        if vocab_size < regions * regions:
            raise ValueError(f"--vocab-size {vocab_size} is smaller than the {regions * regions} distinct codes of "
                             "a prototype")
        generator = torch.Generator().manual_seed(seed)
        block = grid // regions
        self.prototypes = torch.stack([  # (K, N)
            torch.randperm(vocab_size, generator=generator)[:regions * regions].view(regions, regions)
            .repeat_interleave(block, 0).repeat_interleave(block, 1).flatten() for _ in range(num_classes)])
        self.grid, self.vocab_size, self.resample_fraction = grid, vocab_size, resample_fraction
        self.num_samples, self.seed, self.shift = num_samples, seed, shift

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        label = index % len(self.prototypes)
        shift = tuple(int(value) for value in rng.integers(0, self.grid, 2)) if self.shift else (0, 0)
        codes = self.prototypes[label].view(self.grid, self.grid).roll(shift, dims=(0, 1)).flatten()
        redraw = torch.from_numpy(rng.random(codes.numel()) < self.resample_fraction)
        codes[redraw] = torch.from_numpy(rng.integers(0, self.vocab_size, int(redraw.sum())))
        return codes, label

    def held_out(self, count: int):
        """(count, N) codes and (count,) labels of samples after the training set's."""
        items = [self[self.num_samples + i] for i in range(count)]
        return torch.stack([codes for codes, _ in items]), torch.tensor([label for _, label in items])

    def agreement(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) share of positions where each (B, N) sample equals its class's prototype (at the cyclic
        shift that agrees best, when samples are shifted)."""
        samples = tokens.cpu().view(-1, self.grid, self.grid)
        prototypes = self.prototypes[labels.cpu()].view(-1, self.grid, self.grid)
        offsets = range(self.grid) if self.shift else [0]
        shifts = [(rows, columns) for rows in offsets for columns in offsets]
        return torch.stack([(samples == prototypes.roll(shift, dims=(1, 2))).float().mean((1, 2))
                            for shift in shifts]).amax(0)

    def match_share(self, tokens: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of the samples whose agreement is at least half of what a perfect sample keeps
        (1 - resample_fraction); a random grid agrees on about 1/V of its positions."""
        return (self.agreement(tokens, labels) >= (1 - self.resample_fraction) / 2).float().mean().item()


def loss_floor(vocab_size: int, resample_fraction: float) -> float:
    """The entropy (nats) of one token given its class and the shift: no model's loss goes lower."""
    keep = 1 - resample_fraction + resample_fraction / vocab_size
    other = resample_fraction / vocab_size
    return -(keep * math.log(keep) + (vocab_size - 1) * other * math.log(other))


def plateau_loss(vocab_size: int, codes_per_class: int, resample_fraction: float) -> float:
    """The entropy (nats) of one token given its class alone: the loss of a model that has learned only how
    often each code occurs in its class. Training sits here before it learns the grids (ARPG-L: 7.13 with
    one code per position, 2026-11-27; 5.1 with 4 x 4 blocks, where one of three seeds was still there
    at step 350, 2026-11-28)."""
    own = (1 - resample_fraction) / codes_per_class + resample_fraction / vocab_size
    other = resample_fraction / vocab_size
    return -(codes_per_class * own * math.log(own) + (vocab_size - codes_per_class) * other * math.log(other))


def learned_below(args) -> float:
    """A run has learned the set when its held-out loss is below halfway from the plateau to the floor."""
    regions = args.regions or args.grid
    plateau = plateau_loss(args.vocab_size, regions * regions, args.resample_fraction)
    return (plateau + loss_floor(args.vocab_size, args.resample_fraction)) / 2


REFERENCE_MODE, YARDSTICK_MODE = "float32", "bf16-autocast"


@dataclass(frozen=True)
class SamplingMode:
    """How a trained float32 model is run for sampling: `prepare` turns (a copy of) it into the model
    that runs (weights cast, or quantised: an FP8 mode is one more entry), under autocast to `autocast`,
    with TF32 float32 matmuls on CUDA or not, with a KV cache of kind `kv_cache` (SamplingConfig's).
    yardstick: the mode whose KL and top-1 disagreement it must stay within TOLERANCE x of."""
    prepare: Callable[[torch.nn.Module], torch.nn.Module]
    autocast: Optional[torch.dtype] = None
    tf32: bool = False
    kv_cache: str = "model"
    fused: bool = False  # the layers' cache-free parts compiled (make_sampler's fuse, bench_sample --fused)
    yardstick: str = YARDSTICK_MODE


SAMPLING_MODES: Dict[str, SamplingMode] = {
    "float32": SamplingMode(lambda model: model.float()),  # the reference
    "bf16-autocast": SamplingMode(lambda model: model.float(), torch.bfloat16),  # the exact recipe's training numerics
    "tf32": SamplingMode(lambda model: model.float(), tf32=True),  # sample_c2i.py's default (--precision none)
    "bf16": SamplingMode(lambda model: model.to(torch.bfloat16)),  # sample_c2i.py --precision bf16
    "fp16": SamplingMode(lambda model: model.to(torch.float16)),  # sample_c2i.py --precision fp16
    # --precision bf16 --kv-cache int8 / fp8; judged against bf16, so the figures show what the cache adds
    "int8-kv": SamplingMode(lambda model: model.to(torch.bfloat16), kv_cache="int8", yardstick="bf16"),
    "fp8-kv": SamplingMode(lambda model: model.to(torch.bfloat16), kv_cache="fp8", yardstick="bf16"),
    # --precision bf16 with the layers compiled (--fused of the samplers): fused kernels keep float32 where
    # eager ops round; judged against bf16, the same weights unfused
    "bf16-fused": SamplingMode(lambda model: model.to(torch.bfloat16), fused=True, yardstick="bf16"),
}


@contextlib.contextmanager
def matmul_tf32(enabled: bool):
    """TF32 for float32 matmuls on CUDA (a process-wide switch) inside, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def mode_context(mode: SamplingMode, device: torch.device):
    with matmul_tf32(mode.tf32), torch.autocast(device.type, dtype=mode.autocast or torch.bfloat16,
                                                  enabled=mode.autocast is not None):
        yield


def within_noise(share: float, reference: float, count: int) -> bool:
    """Two match shares of `count` samples each differ by no more than two standard errors of their
    difference (binomial, pooled), plus one sample."""
    pooled = (share + reference) / 2
    return abs(share - reference) <= 2 * math.sqrt(2 * pooled * (1 - pooled) / count) + 1 / count


def policy_passes(loss: float, exact_loss: float, run_to_run: float, share: float, exact_share: float,
                  count: int) -> bool:
    return abs(loss - exact_loss) <= TOLERANCE * run_to_run and within_noise(share, exact_share, count)


def mode_passes(kl: float, top1: float, share: float, yardstick_kl: float, yardstick_top1: float,
                reference_share: float, count: int) -> bool:
    close = kl <= TOLERANCE * yardstick_kl and 1 - top1 <= TOLERANCE * (1 - yardstick_top1)
    return close and within_noise(share, reference_share, count)


def split_variant(variant: str) -> Tuple[str, str]:
    """A run's "policy" or "policy + kernel set" -> (policy, kernel set)."""
    policy, _, kernels = variant.partition(" + ")
    return policy, kernels or "none"


def policy_config(args, variant: str, seed: int) -> TrainConfig:
    """train_c2i.py's defaults on the synthetic set: one epoch of args.steps steps, warm-up then a
    constant learning rate; bf16 runs under FSDP (its policy needs it), the others as one process does.
    variant: a policy, or "policy + kernel set" (split_variant)."""
    policy, kernels = split_variant(variant)
    return TrainConfig(kernels=kernels, code_path="", gpt_model=args.gpt_model, vocab_size=args.vocab_size, num_classes=args.num_classes,
                       image_size=args.grid, downsample_size=1, global_batch_size=args.batch_size, epochs=1,
                       lr=args.lr, lr_schedule="constant", warmup_epochs=args.warmup_steps / args.steps,
                       compile=not args.no_compile, num_workers=0, global_seed=seed, device=args.device,
                       data_parallel="fsdp" if policy == "bf16" else "ddp", precision_policy=policy)


def train_policy(cfg: TrainConfig, info: DistInfo, dataset, steps: int):
    """`steps` optimizer steps of train_c2i.py's iteration (Trainer.steps); returns the trainer and the
    loss of every step."""
    trainer = Trainer(cfg, info, dataset)
    return trainer, [loss.item() for loss, _ in trainer.steps(steps)]


def float32_copy(cfg: TrainConfig, trained: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A plain float32 model (eval mode) with `trained`'s weights: gathered from FSDP shards, and the
    float32 weights of float8 layers, which keep the exact model's parameter names."""
    model = build_model(cfg).to(device)
    source = dict(trained.named_parameters())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            weight = source[name]
            parameter.copy_(weight.full_tensor() if hasattr(weight, "full_tensor") else weight)
    return model.eval()


@torch.no_grad()
def next_token_log_probs(model, mode: SamplingMode, codes, labels, orders, num_steps: int,
                         layer_parts=None) -> torch.Tensor:
    """(B, N, V) float32 log-probabilities of the tokens at orders' positions, in generation order, read
    through the KV cache as sampling reads them: `num_steps` steps of the default schedule over the
    fixed orders, each step feeding the true codes (B, N) of the positions the last one predicted, no
    guidance. With one token a step this is teacher forcing (the forward pass, which has no cache).
    layer_parts: the compiled layer parts of a fused mode (fast_generate.fusion)."""
    from autoregressive.generate import EagerSteps, start_decoding
    from autoregressive.sampling import SamplingConfig

    sampling = SamplingConfig(num_steps=num_steps, cfg_scale=1.0, kv_cache=mode.kv_cache)
    true_ids = codes.gather(1, orders)  # (B, N) generation order
    target_slots = orders + model.config.cls_token_num
    logits = []
    with mode_context(mode, codes.device), eager_rounding(layer_parts):
        start = start_decoding(model, labels, sampling, orders=orders)
        run_step, fed_ids, fed_slots = EagerSteps(model, start, layer_parts), start.fed_ids, start.fed_slots
        for step in start.steps:
            query_slots = target_slots[:, step.done_before:step.done_after]
            logits.append(run_step(step, fed_ids, fed_slots, query_slots))
            fed_ids, fed_slots = true_ids[:, step.done_before:step.done_after], query_slots
    return F.log_softmax(torch.cat(logits, dim=1).float(), dim=-1)


def compare_to_reference(reference: torch.Tensor, log_probs: torch.Tensor):
    """Mean KL(reference || log_probs) over positions and the share of positions with the same top-1."""
    kl = (reference.exp() * (reference - log_probs)).sum(-1).mean().item()
    top1 = (reference.argmax(-1) == log_probs.argmax(-1)).float().mean().item()
    return max(kl, 0.0), top1


def decoding_steps(args) -> int:
    """Steps per decoding, generating and reading the held-out distributions alike."""
    return args.num_steps or args.grid ** 2


@torch.no_grad()
def sample_match_share(model, mode: SamplingMode, dataset: PrototypeCodes, args, device, layer_parts=None) -> float:
    """Share of args.samples_per_class samples of every class that match their prototype; the same
    random stream for every model and mode. layer_parts: as next_token_log_probs'."""
    from autoregressive.sampling import SamplingConfig

    sampling = SamplingConfig(num_steps=decoding_steps(args), cfg_scale=args.cfg_scale, kv_cache=mode.kv_cache)
    labels = torch.arange(args.num_classes, device=device).repeat_interleave(args.samples_per_class)
    generator = torch.Generator(device).manual_seed(args.global_seed)
    sample = reference_sampler(model, layer_parts)
    with mode_context(mode, device):
        tokens = torch.cat([sample(chunk, sampling, generator) for chunk in labels.split(args.sample_batch)])
    return dataset.match_share(tokens, labels)


def held_out_batch(dataset: PrototypeCodes, count: int, seed: int, device):
    """Held-out codes, labels and fixed generation orders (B, N) for teacher forcing."""
    codes, labels = dataset.held_out(count)
    orders = torch.rand(codes.shape, generator=torch.Generator().manual_seed(seed)).argsort(1)
    return codes.to(device), labels.to(device), orders.to(device)


def planned_runs(args) -> List[Tuple[str, str, int]]:
    """(name, policy, seed) of every training run: exact twice (the seed and the next one), then each
    other policy from the seed, then exact under each opt-in kernel set ("exact + liger")."""
    runs = [("exact", "exact", args.global_seed), ("exact, next seed", "exact", args.global_seed + 1)]
    runs += [(policy, policy, args.global_seed) for policy in parse_policy_list(args.precision_policies)
             if policy != "exact"]
    return runs + [(f"exact + {kernels}",) * 2 + (args.global_seed,) for kernels in parse_kernel_list(args.kernels)
                   if kernels != "none"]


def run_training(args, info: DistInfo, dataset: PrototypeCodes, held_out, runs: List[Tuple[str, str, int]]):
    """Train and evaluate `runs` (planned_runs' entries) one after the other; returns the table rows
    (not judged), the per-step losses by run, and the exact run's float32 model (None if not among them)."""
    codes, labels, orders = held_out
    rows, curves, exact_model = [], {}, None
    for name, policy, seed in runs:
        row = {"run": name, "seed": seed}
        reason = fp8_unavailable_reason(info.device) if split_variant(policy)[0] in FLOAT8_RECIPES else None
        reason = reason or kernels_unavailable_reason(split_variant(policy)[1], info.device)
        if reason is not None:
            rows.append({**row, "pass": f"not run: {reason}"})
            continue
        started = time.perf_counter()
        cfg = policy_config(args, policy, seed)
        trainer, curves[name] = train_policy(cfg, info, dataset, args.steps)
        trained = time.perf_counter()
        model = float32_copy(cfg, trainer.model, info.device)
        del trainer
        torch._dynamo.reset()  # the next run compiles its own model
        with torch.no_grad(), matmul_tf32(False):
            _, loss = model(codes, labels, targets=codes, orders=orders)
        tail = curves[name][-max(1, args.steps // 10):]
        rows.append({**row, "train loss (last 10%)": sum(tail) / len(tail), "held-out loss": loss.item(),
                     "match share": sample_match_share(model, SAMPLING_MODES[REFERENCE_MODE], dataset, args, info.device)})
        exact_model = model if name == "exact" else exact_model
        # As each run ends: a run cut short by a time limit still shows what it measured.
        print(f"trained {name}: held-out loss {loss.item():.4f}, match share {rows[-1]['match share']:.3f} "
              f"(training {trained - started:.0f} s, compilation included; evaluation {time.perf_counter() - trained:.0f} s)",
              flush=True)
    return rows, curves, exact_model


def judge_policies(rows: List[dict], count: int, learned_below: float = math.inf) -> None:
    """Fill each row's "vs exact" (held-out loss difference), "learned" (held-out loss under
    `learned_below`) and "pass" (rows: exact, exact from the next seed, then the policies; a row that was
    not run has its reason in "pass" already). Until both exact runs have learned the set, their
    difference is when each left the plateau, not numerics, and no policy can be judged against it."""
    exact, next_seed = rows[0], rows[1]
    missing = [row["run"] for row in (exact, next_seed) if "held-out loss" not in row]
    if missing:  # a failed exact run: nothing to judge against
        for row in rows:
            row["pass"] = row.pop("pass", None) or f"inconclusive: {' and '.join(missing)} did not finish"
        return
    run_to_run = abs(next_seed["held-out loss"] - exact["held-out loss"])
    stuck = [row["run"] for row in (exact, next_seed) if row["held-out loss"] >= learned_below]
    for row in rows:
        if "held-out loss" not in row:
            row["pass"] = row.pop("pass")  # the last column
            continue
        row["vs exact"] = row["held-out loss"] - exact["held-out loss"]
        row["learned"] = "yes" if row["held-out loss"] < learned_below else "no"
        passed = policy_passes(row["held-out loss"], exact["held-out loss"], run_to_run, row["match share"],
                               exact["match share"], count)
        if stuck:
            row["pass"] = f"inconclusive: {' and '.join(stuck)} did not learn the set"
        elif row["learned"] == "no":
            row["pass"] = "no: did not learn the set"
        else:
            row["pass"] = "yes" if passed else "no"
    exact["pass"], next_seed["pass"] = "reference", "run-to-run difference"


def run_sampling(args, model, dataset: PrototypeCodes, held_out, modes: List[str], device) -> List[dict]:
    """The exact run's weights in every sampling mode against float32: KL, top-1, match share."""
    codes, labels, orders = held_out
    num_steps = decoding_steps(args)
    reference = next_token_log_probs(model, SAMPLING_MODES[REFERENCE_MODE], codes, labels, orders, num_steps)
    rows = []
    for name in modes:
        started = time.perf_counter()
        mode = SAMPLING_MODES[name]
        prepared = mode.prepare(copy.deepcopy(model))
        parts = fusion(prepared, args.fuse_backend) if mode.fused else None
        kl, top1 = compare_to_reference(reference, next_token_log_probs(prepared, mode, codes, labels, orders,
                                                                        num_steps, parts))
        rows.append({"mode": name, "KL vs float32": kl, "top-1 agreement": top1,
                     "match share": sample_match_share(prepared, mode, dataset, args, device, parts)})
        print(f"sampled {name}: KL {kl:.3g}, top-1 agreement {top1:.4f}, match share {rows[-1]['match share']:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    judge_modes(rows, args.num_classes * args.samples_per_class)
    return rows


def judge_modes(rows: List[dict], count: int) -> None:
    """Fill each row's "yardstick" and "pass" (rows: float32 first, every yardstick before the modes
    judged against it)."""
    reference, by_name = rows[0], {row["mode"]: row for row in rows}
    reference["pass"] = "reference"
    for row in rows[1:]:
        row["yardstick"] = SAMPLING_MODES[row["mode"]].yardstick
        yardstick = by_name[row["yardstick"]]
        passed = mode_passes(row["KL vs float32"], row["top-1 agreement"], row["match share"], yardstick["KL vs float32"],
                             yardstick["top-1 agreement"], reference["match share"], count)
        row["pass"] = "yes" if passed else "no"


def parse_modes(text: str) -> List[str]:
    """--sampling-modes: float32 and bf16-autocast first (the reference and the yardstick), each mode's
    yardstick before it, each once; "none": no sampling comparison (training only, to fit a time limit)."""
    if text == "none":
        return []
    modes = [mode for mode in text.split(",") if mode]
    unknown = [mode for mode in modes if mode not in SAMPLING_MODES]
    if unknown:
        raise ValueError(f"unknown sampling mode {', '.join(unknown)}; choose from {', '.join(SAMPLING_MODES)}")
    with_yardsticks = [name for mode in modes for name in (SAMPLING_MODES[mode].yardstick, mode)]
    return list(dict.fromkeys([REFERENCE_MODE, YARDSTICK_MODE, *with_yardsticks]))


def markdown_table(rows: List[dict]) -> List[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda value: f"{value:.4g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(column, "-")) for column in columns) + " |" for row in rows]


def write_csv(rows: List[dict], path: str) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)


def plot_losses(curves: Dict[str, List[float]], floor: float, vocab_size: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for name, losses in curves.items():
        axis.plot(range(1, len(losses) + 1), losses, label=name, linewidth=1)
    axis.axhline(math.log(vocab_size), color="grey", linestyle=":", label="ln V (chance)")
    axis.axhline(floor, color="black", linestyle="--", label="lowest possible")
    axis.set(xlabel="optimizer step", ylabel="training loss (nats)", title="training loss under each precision policy")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpt-model", choices=list(ARPG_models), default="ARPG-L")
    parser.add_argument("--precision-policies", default=",".join(PRECISION_POLICIES),
                        help="comma-separated training policies, each trained beside exact")
    parser.add_argument("--kernels", default="none", help="comma-separated opt-in kernel sets (liger-ce, liger), "
                        "each trained under the exact policy beside exact")
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
    parser.add_argument("--eval-batch", type=int, default=64, help="held-out samples for the next-token figures")
    parser.add_argument("--samples-per-class", type=int, default=16, help="generated samples per class")
    parser.add_argument("--sample-batch", type=int, default=64, help="samples generated at once")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="decoding steps per generated sample (default: one token a step, so the first token "
                             "fixes the shift the others follow; the tokens of one parallel step are drawn "
                             "independently, each fixing a shift of its own)")
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--no-compile", action="store_true", help="train eagerly (CUDA compiles by default)")
    parser.add_argument("--fuse-backend", default="inductor",
                        help="torch.compile backend of the fused sampling mode (tests: aot_eager)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out-dir", default="results/check-precision")
    parser.add_argument("--parallel", type=int, default=1, help="training runs at once, each in a process of its "
                        "own on a GPU of its own (a 4-GPU machine runs exact, its next seed, bf16 and fp8 together)")
    parser.add_argument("--only-run", default=None, help=argparse.SUPPRESS)  # a --parallel child: this run alone
    parser.add_argument("--run-file", default=None, help=argparse.SUPPRESS)  # where the child writes its result
    return parser


def check_args(args) -> None:
    if not 0 < args.resample_fraction < 1:
        raise UserError(f"--resample-fraction must be in (0, 1), got {args.resample_fraction}")
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
    if args.warmup_steps > args.steps:
        raise UserError(f"--warmup-steps {args.warmup_steps} is more than --steps {args.steps}")


def prepare_data(args, device: torch.device):
    """The synthetic set and its held-out batch, the same in every process of a check."""
    with torch.device("meta"):  # only its configuration is read
        absolute_positions = build_model(policy_config(args, "exact", args.global_seed)).config.learned_pos_embed
    dataset = PrototypeCodes(args.num_classes, args.grid, args.vocab_size, args.resample_fraction,
                             args.steps * args.batch_size, args.global_seed, shift=not absolute_positions,
                             regions=args.regions)
    return dataset, held_out_batch(dataset, args.eval_batch, args.global_seed, device)


def run_check(args, info: DistInfo, only_run: Optional[str] = None):
    """Both comparisons in this process; returns the training rows, the sampling rows and the loss curves.
    only_run: that one training run (and the sampling modes if it is the exact one), rows not judged."""
    dataset, held_out = prepare_data(args, info.device)
    runs = [run for run in planned_runs(args) if only_run in (None, run[0])]
    with matmul_tf32(True):  # train_c2i.py trains with TF32 (enable_tf32)
        training, curves, exact_model = run_training(args, info, dataset, held_out, runs)
    modes = parse_modes(args.sampling_modes)
    sampling = []
    if modes and exact_model is not None:
        sampling = run_sampling(args, exact_model, dataset, held_out, modes, info.device)
    if only_run is None:
        judge_policies(training, args.num_classes * args.samples_per_class, learned_below(args))
    return training, sampling, curves


def child_gpus(parallel: int, environ) -> List[str]:
    """The GPU of each of `parallel` child processes, as CUDA_VISIBLE_DEVICES names it: the parent's own
    visible GPUs in order where it has that variable (CUDA_VISIBLE_DEVICES=2,3 ... --parallel 2 runs on
    GPUs 2 and 3), else 0 .. parallel - 1."""
    visible = [gpu.strip() for gpu in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip()]
    return visible[:parallel] if visible else [str(slot) for slot in range(parallel)]


def run_in_parallel(args, argv: List[str]):
    """Every training run in a process of its own, args.parallel at a time, each on a GPU of its own
    (CUDA_VISIBLE_DEVICES; on the CPU they share the cores); the exact run's process also runs the
    sampling modes. Each writes its rows and curve to <out-dir>/runs/; they are judged here together.
    A run whose process fails gets a row saying so, and the others are still reported."""
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and args.parallel > torch.cuda.device_count():
        raise UserError(f"--parallel {args.parallel} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    gpus = child_gpus(args.parallel, os.environ)
    run_dir = os.path.join(args.out_dir, "runs")
    os.makedirs(run_dir, exist_ok=True)
    pending = list(enumerate(planned_runs(args)))
    running, finished = {}, {}  # slot -> (index, run, process, file); index -> (run, result or exit code)
    while pending or running:
        for slot in [slot for slot in range(args.parallel) if slot not in running][:len(pending)]:
            index, run = pending.pop(0)
            result_file = os.path.join(run_dir, f"run{index}.json")
            if os.path.exists(result_file):
                os.remove(result_file)  # never read an earlier check's result as this one's
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                   "WORLD_SIZE": "1"}
            if use_cuda:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
            command = [sys.executable, "-m", "scripts.check_precision", *argv, "--parallel", "1",
                       "--only-run", run[0], "--run-file", result_file]
            running[slot] = (index, run, subprocess.Popen(command, env=env), result_file)
        time.sleep(0.2)
        for slot, (index, run, process, result_file) in list(running.items()):
            if process.poll() is None:
                continue
            del running[slot]
            if process.returncode == 0 and os.path.exists(result_file):
                with open(result_file) as file:
                    finished[index] = (run, json.load(file))
            else:
                finished[index] = (run, process.returncode)
    training, sampling, curves = [], [], {}
    for index in sorted(finished):
        (name, _, seed), result = finished[index]
        if isinstance(result, int):
            training.append({"run": name, "seed": seed, "pass": f"failed: its process exited with code {result} "
                                                                  "(its output is above)"})
            continue
        training += result["training"]
        sampling += result["sampling"]
        curves.update(result["curves"])
    judge_policies(training, args.num_classes * args.samples_per_class, learned_below(args))
    return training, sampling, curves


def report(args, training: List[dict], sampling: List[dict], curves: Dict[str, List[float]]) -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    floor = loss_floor(args.vocab_size, args.resample_fraction)
    lines = [f"{args.gpt_model}, {args.steps} steps of batch {args.batch_size}, {args.num_classes} classes, "
             f"{args.resample_fraction:.0%} of positions redrawn: ln V = {math.log(args.vocab_size):.3f}, "
             f"lowest possible loss {floor:.3f}", "", "Training (held-out loss in float32):", "",
             *markdown_table(training)]
    if sampling:
        lines += ["", "Sampling (next-token distributions read through the KV cache, against float32; exact run's "
                      "weights):", "", *markdown_table(sampling)]
    stuck = [row["run"] for row in training if row.get("learned") == "no"]
    if stuck:
        lines += ["", f"WARNING: {', '.join(stuck)} did not learn the set (held-out loss above "
                      f"{learned_below(args):.3f}, halfway from the class code-frequency plateau to the lowest "
                      "possible): raise --steps or --lr"]
    with open(os.path.join(args.out_dir, "report.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    write_csv(training, os.path.join(args.out_dir, "training.csv"))
    written = ["report.md", "training.csv"]
    if sampling:
        write_csv(sampling, os.path.join(args.out_dir, "sampling.csv"))
        written.append("sampling.csv")
    plot_losses(curves, floor, args.vocab_size, os.path.join(args.out_dir, "losses.png"))
    print("\n".join(lines))
    print(f"wrote {', '.join(written)} and losses.png to {args.out_dir}")


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

"""The check's runs in this process: train every planned policy run with train_c2i.py's iteration, then read
the exact run's weights in every sampling mode."""
import copy
import time
from typing import List, NamedTuple, Optional

import torch

from autoregressive.fast_generate import layer_parts_for
from autoregressive.train.config import TrainConfig, build_model
from autoregressive.train.loop import Trainer
from autoregressive.train.precision import parse_mlp_kernels, parse_policy_list, unavailable_reason, with_mlp_kernels
from autoregressive.utils.dist import DistInfo
from scripts.precision_check import finished
from scripts.precision_check.data import PrototypeCodes, held_out_batch, learned_below
from scripts.precision_check.judge import judge_modes, judge_policies
from scripts.precision_check.measure import compare_to_reference, decoding_steps, next_token_log_probs, sample_match_share
from scripts.precision_check.modes import REFERENCE_MODE, SAMPLING_MODES, matmul_tf32, parse_modes


class PlannedRun(NamedTuple):
    name: str
    policy: str  # --precision-policy
    seed: int
    mlp_kernel: str = "torch"  # --mlp-kernel


def policy_config(args, policy: str, seed: int, mlp_kernel: str = "torch") -> TrainConfig:
    """train_c2i.py's defaults on the synthetic set: one epoch of args.steps steps, warm-up then a
    constant learning rate; bf16 runs under FSDP (its policy needs it), the others as one process does."""
    return TrainConfig(code_path="", gpt_model=args.gpt_model, vocab_size=args.vocab_size, num_classes=args.num_classes,
                       image_size=args.grid, downsample_size=1, global_batch_size=args.batch_size, epochs=1,
                       lr=args.lr, lr_schedule="constant", warmup_epochs=args.warmup_steps / args.steps,
                       compile=not args.no_compile, num_workers=0, global_seed=seed, device=args.device,
                       data_parallel="fsdp" if policy == "bf16" else "ddp", precision_policy=policy,
                       mlp_kernel=mlp_kernel)


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


def planned_runs(args) -> List[PlannedRun]:
    """Every training run: exact from args.exact_seeds successive seeds ("exact", "exact, next seed",
    "exact, seed +2", ...), then each other policy from the first seed, then each policy it can join with
    each opt-in MLP kernel of args.mlp_kernels ("exact + quack MLP", "bf16 + quack MLP")."""
    policies = parse_policy_list(args.precision_policies)
    names = ["exact", "exact, next seed"] + [f"exact, seed +{k}" for k in range(2, args.exact_seeds)]
    runs = [PlannedRun(name, "exact", args.global_seed + k) for k, name in enumerate(names[:args.exact_seeds])]
    runs += [PlannedRun(policy, policy, args.global_seed) for policy in policies if policy != "exact"]
    return runs + [PlannedRun(f"{policy} + {kernel} MLP", policy, args.global_seed, kernel)
                   for policy, kernel in with_mlp_kernels(policies, parse_mlp_kernels(getattr(args, "mlp_kernels", "")))]


def run_training(args, info: DistInfo, dataset: PrototypeCodes, held_out, runs: List[PlannedRun],
                 keep_exact_model: bool = False):
    """Train and evaluate `runs` (planned_runs') one after the other, each saved as it ends (finished.py);
    with args.resume, a run saved under the same settings is read instead, except the exact run when
    keep_exact_model (the sampling modes read its weights). Returns the table rows (not judged), the
    per-step losses by run, and the exact run's float32 model (None if not trained here)."""
    codes, labels, orders = held_out
    rows, curves, exact_model = [], {}, None
    for run in runs:
        name = run.name
        row = {"run": name, "seed": run.seed}
        reason = unavailable_reason(run.policy, run.mlp_kernel, info.device)
        if reason is not None:
            rows.append({**row, "pass": f"not run: {reason}"})
            continue
        saved = finished.load(args, run) if args.resume and not (keep_exact_model and name == "exact") else None
        if saved is not None:
            rows.append(saved[0])
            curves[name] = saved[1]
            print(f"read {name} from {finished.path_of(args, run)}: held-out loss {saved[0]['held-out loss']:.4f}",
                  flush=True)
            continue
        started = time.perf_counter()
        cfg = policy_config(args, run.policy, run.seed, run.mlp_kernel)
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
        finished.save(args, run, rows[-1], curves[name])
        # As each run ends: a run cut short by a time limit still shows what it measured.
        print(f"trained {name}: held-out loss {loss.item():.4f}, match share {rows[-1]['match share']:.3f} "
              f"(training {trained - started:.0f} s, compilation included; evaluation {time.perf_counter() - trained:.0f} s)",
              flush=True)
    return rows, curves, exact_model


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
        parts = layer_parts_for(prepared, args.compile_layers_backend) if mode.compile_layers else None
        kl, top1 = compare_to_reference(reference, next_token_log_probs(prepared, mode, codes, labels, orders,
                                                                        num_steps, parts))
        rows.append({"mode": name, "KL vs float32": kl, "top-1 agreement": top1,
                     "match share": sample_match_share(prepared, mode, dataset, args, device, parts)})
        print(f"sampled {name}: KL {kl:.3g}, top-1 agreement {top1:.4f}, match share {rows[-1]['match share']:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    judge_modes(rows, args.num_classes * args.samples_per_class)
    return rows


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
    runs = [run for run in planned_runs(args) if only_run in (None, run.name)]
    modes = parse_modes(args.sampling_modes)
    with matmul_tf32(True):  # train_c2i.py trains with TF32 (enable_tf32)
        training, curves, exact_model = run_training(args, info, dataset, held_out, runs, keep_exact_model=bool(modes))
    sampling = []
    if modes and exact_model is not None:
        sampling = run_sampling(args, exact_model, dataset, held_out, modes, info.device)
    if only_run is None:
        judge_policies(training, args.num_classes * args.samples_per_class, learned_below(args), args.exact_seeds)
    return training, sampling, curves

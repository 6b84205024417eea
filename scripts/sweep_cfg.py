"""Classifier-free guidance sweep: sample N images per (cfg schedule, scale), score them, plot the metrics.

    torchrun --nproc_per_node=8 -m scripts.sweep_cfg --gpt-model ARPG-L --gpt-ckpt arpg_300m.pt \\
        --vq-ckpt vq_ds16_c2i.pt --ref-batch VIRTUAL_imagenet256_labeled.npz \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth \\
        --cfg-scales 3 4 5 6 7 --num-samples 10000 --step 64 --out-dir results/sweep-arpg-l
    python -m scripts.sweep_cfg --gpt-model ARPG-digits --gpt-ckpt results/digits/000-ARPG-digits/checkpoints/0001200.pt \\
        --cfg-scales 1 1.5 2 3 4 --num-samples 200 --step 16 --device cpu --out-dir results/sweep-digits

Sample i has class i mod num_classes. Batch k (of --per-proc-batch-size) runs on rank k mod world size with
randomness drawn from (--global-seed, first index), as in sample_c2i_ddp.py, so the figures do not depend on
the number of processes. A model without a VQ tokenizer (the digits demo) is judged by evaluations/digits.py
(class accuracy, Frechet distance); any other by the ADM evaluator (IS, FID, sFID, precision, recall)
against --ref-batch. Writes sweep.csv and sweep.png to --out-dir and prints the best scale (lowest FID or
FD). --out-dir must be readable by every rank (one node, or a shared file system).
"""
import argparse
import csv
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from autoregressive.fast_generate import make_sampler
from autoregressive.model_args import add_model_args, check_model_args, model_from_args
from autoregressive.pretrained import IMAGENET_SIZES
from autoregressive.render import tokens_to_images
from autoregressive.sampling import CFG_SCHEDULES, SamplingConfig, add_sampling_args, batch_generator
from autoregressive.utils.cli import UserError, check_at_least, check_at_most, check_file, run_main
from autoregressive.utils.dist import barrier, cleanup, init_distributed
from autoregressive.utils.logger import get_logger


@dataclass(frozen=True)
class Judge:
    """Scores one batch of samples; the sweep minimises best_by."""
    metrics: Tuple[str, ...]  # CSV columns and plot panels, in order
    best_by: str  # lower is better
    score: Callable[[np.ndarray, np.ndarray, str], Dict[str, float]]  # (samples, labels, tag) -> metrics


def digits_judge() -> Judge:
    """Samples are (M, 64) grey-level tokens; see evaluations/digits.py."""
    from evaluations.digits import judge

    def score(tokens, labels, tag):
        report = judge(tokens, labels)
        return {"class accuracy": report.accuracy, "FD (PCA-20)": report.frechet}

    return Judge(("class accuracy", "FD (PCA-20)"), "FD (PCA-20)", score)


def memoized(features: Callable) -> Callable:
    """The reference batch is the same at every scale: compute its features once."""
    cache = {}

    def cached(images):
        key = (images.shape, hashlib.sha1(memoryview(np.ascontiguousarray(images))).hexdigest())
        if key not in cache:
            cache[key] = features(images)
        return cache[key]

    return cached


def adm_judge(ref_batch: str, features: Callable, out_dir: str) -> Judge:
    """Samples are (M, H, W, 3) uint8 images, written as <out_dir>/<tag>.npz and scored by the ADM evaluator;
    features: images -> (pool, spatial, logits) as evaluations/c2i/inception.py gives."""
    from evaluations.c2i.evaluator import evaluate

    features = memoized(features)

    def score(images, labels, tag):
        path = os.path.join(out_dir, f"{tag}.npz")
        np.savez(path, arr_0=images, labels=labels)
        return evaluate(ref_batch, path, features)

    return Judge(("FID", "Inception Score", "Precision", "Recall", "sFID"), "FID", score)


def sample_my_batches(sampler, render: Callable, sampling: SamplingConfig, total: int, batch: int,
                      num_classes: int, seed: int, rank: int, world_size: int, device) -> Dict[int, np.ndarray]:
    """{first index: rendered outputs} of the batches this rank owns."""
    outputs = {}
    for first in range(rank * batch, total, world_size * batch):
        labels = torch.arange(first, first + batch, device=device) % num_classes
        tokens = sampler(labels, sampling, batch_generator(device, seed, first))
        outputs[first] = render(tokens)[:total - first]
    return outputs


def gather_on_main(outputs: Dict[int, np.ndarray], folder: str, rank: int, world_size: int, total: int):
    """Every rank's outputs, in sample order, on rank 0 (through files in folder); None elsewhere."""
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, f"rank{rank:03d}.npz"), **{str(first): array for first, array in outputs.items()})
    barrier()
    if rank != 0:
        return None
    parts = {}
    for other in range(world_size):
        path = os.path.join(folder, f"rank{other:03d}.npz")
        with np.load(path) as part:
            parts.update({int(first): part[first] for first in part.files})
        os.remove(path)
    samples = np.concatenate([parts[first] for first in sorted(parts)])
    if len(samples) != total:
        raise RuntimeError(f"gathered {len(samples)} samples from {folder}, expected {total}")
    return samples


def best_row(rows: List[dict], metric: str) -> dict:
    return min(rows, key=lambda row: row[metric])


def write_csv(rows: List[dict], path: str) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: List[dict], metrics: Tuple[str, ...], best_by: str, path: str, title: str) -> None:
    """One panel per metric against the scale, one line per cfg schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for schedule in dict.fromkeys(row["cfg_schedule"] for row in rows):
            mine = sorted((row for row in rows if row["cfg_schedule"] == schedule), key=lambda row: row["cfg_scale"])
            axis.plot([row["cfg_scale"] for row in mine], [row[metric] for row in mine], marker="o", label=schedule)
        axis.set_xlabel("CFG scale")
        axis.set_title(f"{metric} (lower is better)" if metric == best_by else metric)
        axis.grid(alpha=0.3)
    axes[0][0].legend(title="cfg schedule")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Sweep the CFG scale: sample, score, CSV and plot.")
    add_model_args(parser, precision="bf16", sizes=False)  # --precision: on CUDA; float32 on the CPU
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="the CUDA-graph fast sampler on CUDA (same tokens as the reference loop)")
    parser.add_argument("--ref-batch", default=None, help="ADM reference npz (VIRTUAL_imagenet256_labeled.npz)")
    parser.add_argument("--inception-weights", default=None, help="weights-inception-2015-12-05-6726825d.pth")
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    parser.add_argument("--cfg-schedules", nargs="+", choices=CFG_SCHEDULES, default=list(CFG_SCHEDULES))
    parser.add_argument("--num-samples", type=int, default=5000, help="per (schedule, scale)")
    parser.add_argument("--per-proc-batch-size", type=int, default=64)
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--out-dir", default="results/sweep")
    return add_sampling_args(parser, skip=("cfg_scale", "cfg_schedule"))  # swept: --cfg-scales, --cfg-schedules


def check_args(args) -> List[SamplingConfig]:
    """Refuse bad flags before any model is built or folder made; -> the sampling settings of every point,
    schedule by schedule."""
    check_model_args(args)
    for flag, path in (("--ref-batch", args.ref_batch), ("--inception-weights", args.inception_weights)):
        check_file(flag, path)
    check_at_least("--num-samples", args.num_samples, 2)  # a Frechet distance needs a covariance
    check_at_least("--per-proc-batch-size", args.per_proc_batch_size, 1)
    for scale in args.cfg_scales:
        check_at_least("--cfg-scales", scale, 0)  # 0 is the "no class" prediction alone
    if uses_tokenizer(args) and not args.ref_batch:
        raise UserError("scoring images needs --ref-batch (and --inception-weights, or the network to download "
                        "them; see docs/sampling.md)")
    return [SamplingConfig.from_args(args, cfg_scale=scale, cfg_schedule=schedule)
            for schedule in args.cfg_schedules for scale in args.cfg_scales]


def uses_tokenizer(args) -> bool:
    """Images are scored (not digits): a --vq-ckpt, or an ImageNet size whose released VQ-16 is fetched."""
    return args.vq_ckpt is not None or args.gpt_model in IMAGENET_SIZES


def make_judge(args, config, vq, device) -> Judge:
    if vq is None:
        if config.vocab_size > 256:
            raise UserError("--vq-ckpt is required to turn image tokens into pixels (LlamaGen's vq_ds16_c2i.pt)")
        if args.ref_batch is None:
            return digits_judge()
    from evaluations.c2i.inception import InceptionFeatures

    return adm_judge(args.ref_batch, InceptionFeatures(args.inception_weights, str(device)), args.out_dir)


def main(args) -> List[dict]:
    points = check_args(args)
    info = init_distributed(args.device)
    logger = get_logger("arpg.sweep", rank=info.rank)
    precision = args.precision if info.device.type == "cuda" else "none"
    model, vq = model_from_args(args, info.device, precision=precision)
    config = model.config
    check_at_most("--step", args.step, config.block_size, "the number of tokens of an image")
    judge = make_judge(args, config, vq, info.device) if info.is_main else None
    os.makedirs(args.out_dir, exist_ok=True)
    if vq is None and args.ref_batch is None:
        render = lambda tokens: tokens.int().cpu().numpy()  # the digits judge reads grey-level tokens
    else:
        render = lambda tokens: tokens_to_images(tokens, config.grid_size, vq, config.vocab_size).numpy()
    sampler = make_sampler(model, use_fast=args.compile)
    rows = []
    for sampling in points:
        schedule, scale = sampling.cfg_schedule, sampling.cfg_scale
        tag = f"cfg-{scale:g}-{schedule}"
        outputs = sample_my_batches(sampler, render, sampling, args.num_samples, args.per_proc_batch_size,
                                    config.num_classes, args.global_seed, info.rank, info.world_size, info.device)
        samples = gather_on_main(outputs, os.path.join(args.out_dir, "parts", tag), info.rank, info.world_size,
                                 args.num_samples)
        if info.is_main:
            labels = np.arange(len(samples)) % config.num_classes
            rows.append({"cfg_schedule": schedule, "cfg_scale": scale, "num_samples": len(samples),
                         **judge.score(samples, labels, tag)})
            logger.info(", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                  for key, value in rows[-1].items()))
        barrier()
    if info.is_main:
        report(rows, judge, args)
    cleanup()
    return rows


def report(rows: List[dict], judge: Judge, args) -> None:
    csv_path, png_path = os.path.join(args.out_dir, "sweep.csv"), os.path.join(args.out_dir, "sweep.png")
    write_csv(rows, csv_path)
    plot(rows, judge.metrics, judge.best_by, png_path, f"{args.gpt_model}, {args.num_samples} samples, {args.step} steps")
    for schedule in args.cfg_schedules:
        best = best_row([row for row in rows if row["cfg_schedule"] == schedule], judge.best_by)
        print(f"{schedule} schedule: best cfg scale {best['cfg_scale']:g} ({judge.best_by} {best[judge.best_by]:.4f})")
    best = best_row(rows, judge.best_by)
    print(f"best cfg scale: {best['cfg_scale']:g} with the {best['cfg_schedule']} schedule "
          f"({judge.best_by} {best[judge.best_by]:.4f}); wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    run_main(lambda argv: main(get_args_parser().parse_args(argv)))

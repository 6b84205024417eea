"""What one evaluation of train_c2i.py --eval-every costs on one GPU: the path a training run takes
(autoregressive/train/monitor.py: weights copy in bf16, CUDA-graph sampler, VQ decode, Inception
features, FID/IS/sFID on rank 0), timed for ARPG-L (random weights: the cost does not depend on them)
at each --num-images, after one small warm-up evaluation that pays the one-time loads.

    python -m scripts.bench_eval --gpt-model ARPG-L --num-images 5000 10000 --step-seconds 0.15

Nothing is downloaded: the VQ-16 and (unless --inception-weights or the torch hub cache has them) the
Inception network get random weights of their real shapes, which time the same, and the reference is
random statistics of the real sizes. --step-seconds (one optimizer step; scripts/bench_train.py
measures it) adds each evaluation's share of the training time at a few --eval-every intervals.
"""
import argparse
import dataclasses
import os
import tempfile
import time
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple
from unittest import mock

import numpy as np
import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.train.checkpoint import Progress
from autoregressive.train.config import TrainConfig
from autoregressive.train.monitor import Monitor
from autoregressive.utils.cli import UserError, run_main
from autoregressive.utils.device import enable_tf32
from autoregressive.utils.dist import DistInfo
from autoregressive.utils.logger import get_logger

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file in the torch hub cache
INTERVALS = (5000, 10000, 20000)


def random_inception_weights(path: str) -> None:
    """torch-fidelity's InceptionV3 with its random initial weights, saved where a weights file goes."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with mock.patch.object(inception, "load_state_dict_from_url", lambda *args, **kwargs: {}), \
            mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *args, **kwargs: None):
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    torch.save(net.state_dict(), path)


def inception_weights(given: Optional[str], folder: str) -> Tuple[str, bool]:
    """(weights file, real?): the given file, torch-fidelity's cached one, else random weights."""
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_NAME)
    for path in (given, cached):
        if path and os.path.isfile(path):
            return path, True
    path = os.path.join(folder, "inception-random.pth")
    random_inception_weights(path)
    return path, False


def random_reference(path: str) -> None:
    """Statistics of the ADM reference's sizes (pool 2048, spatial 2023): FID and sFID cost what they cost there."""
    rng = np.random.default_rng(0)
    stats = {}
    for prefix, dim in (("", 2048), ("_s", 2023)):
        features = rng.standard_normal((4 * dim, dim)).astype(np.float32)
        stats[f"mu{prefix}"], stats[f"sigma{prefix}"] = features.mean(0), np.cov(features, rowvar=False)
    np.savez(path, **stats)


class Timer:
    """Wraps a callable and adds up the seconds spent in it (the callables return host arrays: synced)."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.function(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return result


def timed_evaluation(monitor: Monitor, trainer, num_images: int) -> Dict[str, float]:
    """One evaluation through Monitor.after_step, split into sampling, VQ decode, Inception and scoring."""
    monitor.cfg = dataclasses.replace(monitor.cfg, eval_num_images=num_images)
    judge = monitor.judge()
    judge.render, judge._features = Timer(judge.render), Timer(judge.inception())
    score = judge.score = Timer(judge.score)
    rows = monitor.my_rows = Timer(monitor.my_rows)
    total = monitor.after_step(trainer)
    decode, features = judge.render.seconds, judge._features.seconds
    return {"sampling": rows.seconds - decode - features, "decode": decode, "features": features,
            "scoring": score.seconds, "total": total}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time one training-time evaluation (FID) on one GPU.")
    parser.add_argument("--gpt-model", choices=list(ARPG_models), default="ARPG-L")
    parser.add_argument("--num-images", type=int, nargs="+", default=[5000, 10000])
    parser.add_argument("--eval-batch-size", type=int, default=TrainConfig.eval_batch_size)
    parser.add_argument("--eval-step", type=int, default=TrainConfig.eval_num_steps)
    parser.add_argument("--eval-cfg-scale", type=float, default=TrainConfig.eval_cfg_scale)
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: only to try the script")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="seconds of one training step, for the share of training time")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device is visible: bench_eval times the GPU path (--device cpu only tries the script)")
    if device.type == "cuda":
        enable_tf32()
    with tempfile.TemporaryDirectory() as folder:
        from tokenizer.vq_model import VQ_models

        torch.manual_seed(0)
        torch.save(VQ_models["VQ-16"]().state_dict(), os.path.join(folder, "vq.pt"))
        weights, real = inception_weights(args.inception_weights, folder)
        random_reference(os.path.join(folder, "ref.npz"))
        cfg = TrainConfig(code_path="", gpt_model=args.gpt_model, eval_every=1, eval_ref_batch=os.path.join(folder, "ref.npz"),
                          eval_batch_size=args.eval_batch_size, eval_num_steps=args.eval_step,
                          eval_cfg_scale=args.eval_cfg_scale, inception_weights=weights,
                          vq_ckpt=os.path.join(folder, "vq.pt"))
        # float32, as training keeps it; the monitor copies it to bf16
        model = ARPG_models[args.gpt_model](vocab_size=cfg.vocab_size, num_classes=cfg.num_classes,
                                            block_size=cfg.block_size).to(device)
        trainer = SimpleNamespace(progress=Progress(step=1), ema=None, model=model)
        info = DistInfo(0, 1, 0, device)
        monitor = Monitor(cfg, info, folder, get_logger("arpg.bench_eval", folder), None, 0)
        start = time.perf_counter()
        timed_evaluation(monitor, trainer, 2 * args.eval_batch_size)
        warm_up = time.perf_counter() - start
        results = [(num, timed_evaluation(monitor, trainer, num)) for num in args.num_images]
    print_table(args, results, warm_up, real)


def print_table(args, results: List, warm_up: float, real_inception: bool) -> None:
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\n{args.gpt_model} (random weights), {name}, torch {torch.__version__}, --eval-step {args.eval_step} "
          f"--eval-cfg-scale {args.eval_cfg_scale} --eval-batch-size {args.eval_batch_size}; Inception weights: "
          f"{'real' if real_inception else 'random (the real file is not here; same network, same time)'}")
    print(f"one-time loads and first capture (warm-up of {2 * args.eval_batch_size} images): {warm_up:.1f} s\n")
    print("| images | sampling s | VQ decode s | Inception s | FID/IS/sFID s | other s | total s | img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for num, t in results:
        other = t["total"] - t["sampling"] - t["decode"] - t["features"] - t["scoring"]  # weights copy, CSV, plot
        print(f"| {num:,} | {t['sampling']:.1f} | {t['decode']:.1f} | {t['features']:.1f} | {t['scoring']:.1f} | "
              f"{other:.1f} | {t['total']:.1f} | {num / t['total']:.0f} |")
    if args.step_seconds:
        print(f"\nshare of training time at {args.step_seconds} s per step:")
        print("| images | " + " | ".join(f"--eval-every {n}" for n in INTERVALS) + " |")
        print("|---|" + "---|" * len(INTERVALS))
        for num, t in results:
            shares = [t["total"] / (t["total"] + n * args.step_seconds) for n in INTERVALS]
            print(f"| {num:,} | " + " | ".join(f"{share:.1%}" for share in shares) + " |")


if __name__ == "__main__":
    run_main(main)

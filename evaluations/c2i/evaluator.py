"""The ADM evaluator's command, in PyTorch: Inception Score, FID, sFID, precision and recall.

    python -m evaluations.c2i.evaluator VIRTUAL_imagenet256_labeled.npz samples.npz \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth  # omitted: torch-fidelity downloads them

Images are read from arr_0 (N, H, W, 3) in 0..255. When the reference npz stores mu/sigma (pool_3) and
mu_s/sigma_s (spatial), FID and sFID use them, as ADM does; its arr_0 serves precision and recall.
The figures are printed and written beside the sample npz as <sample>.txt.
"""
import argparse
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from autoregressive.utils.cli import InputNotFound, UserError, check_at_least, run_main

from evaluations.c2i.metrics import frechet_distance, inception_score, precision_recall, statistics

STORED_STATS = ("mu", "sigma", "mu_s", "sigma_s")


def read_images(path: str, data) -> np.ndarray:
    """arr_0 of an npz as uint8 NHWC, with an error naming the file if it is not a valid image batch."""
    if "arr_0" not in data:
        raise UserError(f"{path} has no arr_0 (it holds {sorted(data.keys())})")
    images = data["arr_0"]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"{path}: arr_0 must be (N, H, W, 3), got {images.shape}")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise UserError(f"{path}: arr_0 holds NaN or inf; the sampler wrote broken images, sample again")
    if not np.issubdtype(images.dtype, np.integer):
        # Casting would turn floats in [0, 1] into black images and give a confident, wrong FID.
        scale = " (its values lie in [0, 1]: multiply by 255 first)" if images.size and images.max() <= 1 else ""
        raise UserError(f"{path}: arr_0 is {images.dtype}, the evaluator needs uint8 pixels 0..255{scale}; "
                        "save it with np.clip(x, 0, 255).round().astype(np.uint8)")
    if images.size and (images.min() < 0 or images.max() > 255):
        raise UserError(f"{path}: arr_0 values must be in 0..255, got {images.min()}..{images.max()}")
    return images.astype(np.uint8)


def open_npz(path: str):
    """np.load of an npz, with an error naming the file if it is not one."""
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{path} is not a readable .npz file, it is corrupt or of another format "
                        f"({str(error).splitlines()[0]}); write it again") from error


@dataclass
class Batches:
    sample_images: np.ndarray  # (M, H, W, 3) uint8
    ref_images: Optional[np.ndarray]  # the reference arr_0, if it has one
    ref_stats: Optional[Tuple[np.ndarray, ...]]  # stored mu, sigma, mu_s, sigma_s, if any


def read_batches(ref_path: str, sample_path: str) -> Batches:
    """Both npz files, checked before the (long) feature pass."""
    with open_npz(ref_path) as ref, open_npz(sample_path) as sample:
        sample_images = read_images(sample_path, sample)
        ref_images = read_images(ref_path, ref) if "arr_0" in ref else None
        ref_stats = tuple(ref[key] for key in STORED_STATS) if all(key in ref for key in STORED_STATS) else None
    if ref_stats is None and ref_images is None:
        raise UserError(f"{ref_path} has neither arr_0 nor the statistics {STORED_STATS}")
    return Batches(sample_images, ref_images, ref_stats)


def evaluate(ref_path: str, sample_path: str, features: Callable) -> Dict[str, float]:
    """features: images (M, H, W, 3) uint8 -> (pool (M, 2048), spatial (M, d), logits (M, 1008))."""
    return metrics_of(read_batches(ref_path, sample_path), features)


def metrics_of(batches: Batches, features: Callable) -> Dict[str, float]:
    sample_pool, sample_spatial, sample_logits = features(batches.sample_images)
    ref_pool = None
    if batches.ref_images is not None:
        ref_pool, ref_spatial, _ = features(batches.ref_images)
    if batches.ref_stats is not None:
        mu, sigma, mu_s, sigma_s = batches.ref_stats
    else:
        (mu, sigma), (mu_s, sigma_s) = statistics(ref_pool), statistics(ref_spatial)
    results = {"Inception Score": inception_score(sample_logits),
               "FID": frechet_distance(*statistics(sample_pool), mu, sigma),
               "sFID": frechet_distance(*statistics(sample_spatial), mu_s, sigma_s)}
    if ref_pool is not None:
        results["Precision"], results["Recall"] = precision_recall(ref_pool, sample_pool)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description="ADM metrics (IS, FID, sFID, precision, recall) in PyTorch.")
    parser.add_argument("ref_batch", help="reference npz, e.g. VIRTUAL_imagenet256_labeled.npz")
    parser.add_argument("sample_batch", help="sample npz written by sample_c2i_ddp.py")
    parser.add_argument("--inception-weights", default=None,
                        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (see docs/sampling.md); omitted: "
                             "torch-fidelity downloads them into the torch hub cache, or finds them there")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA when present")
    args = parser.parse_args(argv)
    for path in (args.ref_batch, args.sample_batch):
        if not os.path.isfile(path):
            raise InputNotFound(f"npz not found: {path}")
    check_at_least("--batch-size", args.batch_size, 1)
    from autoregressive.utils.device import resolve_device
    from evaluations.c2i.inception import InceptionFeatures, check_weights_file

    check_weights_file(args.inception_weights)
    device = resolve_device(args.device)
    batches = read_batches(args.ref_batch, args.sample_batch)
    results = metrics_of(batches, InceptionFeatures(args.inception_weights, device, args.batch_size))
    lines = [f"{name}: {value:.4f}" for name, value in results.items()]
    with open(os.path.splitext(args.sample_batch)[0] + ".txt", "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)

"""FID, Inception Score, sFID (and optionally precision and recall) of many sample sets against one fixed
reference: the Inception network and the reference statistics are loaded once, and each process turns its
own samples into features before one process scores them all (a training run evaluates itself this way,
see autoregressive/train/monitor.py). The figures are the ADM evaluator's (evaluations/c2i/evaluator.py)
on the same features.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch

from autoregressive.utils.cli import InputNotFound, UserError
from evaluations.c2i.evaluator import open_npz, read_images
from evaluations.c2i.metrics import frechet_distance, inception_score, precision_recall, statistics

Features = Callable[[np.ndarray], tuple]  # images (M, H, W, 3) uint8 -> (pool, spatial, logits)


@dataclass
class Reference:
    mu: np.ndarray  # (2048,) pool_3 mean
    sigma: np.ndarray  # (2048, 2048)
    mu_s: Optional[np.ndarray] = None  # spatial statistics, for sFID; None: the file has none
    sigma_s: Optional[np.ndarray] = None
    pool: Optional[np.ndarray] = None  # (K, 2048) features of the reference images, for precision and recall


def load_reference(path: str, features: Features, with_images: bool) -> Reference:
    """An ADM reference batch (arr_0 and/or mu, sigma, mu_s, sigma_s) or a file of precomputed statistics
    (mu and sigma alone, as MAR's fid_stats). Stored statistics are used as they are; the images are run
    through `features` only when there are no statistics or when with_images (precision and recall)."""
    if not os.path.isfile(path):
        raise InputNotFound(f"--eval-ref-batch {path}: not found")
    with open_npz(path) as data:
        has_stats = "mu" in data and "sigma" in data
        if not has_stats and "arr_0" not in data:
            raise UserError(f"{path} has neither arr_0 nor the statistics mu and sigma")
        if with_images and "arr_0" not in data:
            raise UserError(f"{path} holds statistics only: precision and recall need its images (arr_0); pass "
                            "an ADM reference batch such as VIRTUAL_imagenet256_labeled.npz, or drop "
                            "--eval-precision-recall")
        images = read_images(path, data) if "arr_0" in data and (with_images or not has_stats) else None
        stored = {key: data[key] for key in ("mu", "sigma", "mu_s", "sigma_s") if key in data}
    pool = spatial = None
    if images is not None:
        pool, spatial, _ = features(images)
    if has_stats:
        mu_s, sigma_s = stored.get("mu_s"), stored.get("sigma_s")
        if mu_s is None and spatial is not None:
            mu_s, sigma_s = statistics(spatial)
        return Reference(stored["mu"], stored["sigma"], mu_s, sigma_s, pool if with_images else None)
    (mu, sigma), (mu_s, sigma_s) = statistics(pool), statistics(spatial)
    return Reference(mu, sigma, mu_s, sigma_s, pool if with_images else None)


class InceptionJudge:
    """Scores class-conditional ImageNet samples. render: (B, N) tokens -> (B, H, W, 3) uint8 numpy;
    features: the Inception features (tests pass their own; by default evaluations/c2i/inception.py's,
    built on first use)."""

    def __init__(self, ref_path: str, render: Callable[[torch.Tensor], np.ndarray], inception_weights: Optional[str],
                 device, batch_size: int = 64, with_precision_recall: bool = False,
                 features: Optional[Features] = None):
        self.ref_path, self.render, self.with_precision_recall = ref_path, render, with_precision_recall
        self.inception_weights, self.device, self.batch_size = inception_weights, device, batch_size
        self._features, self._reference = features, None

    def inception(self) -> Features:
        if self._features is None:
            from evaluations.c2i.inception import InceptionFeatures

            self._features = InceptionFeatures(self.inception_weights, self.device, self.batch_size)
        return self._features

    def features(self, tokens: torch.Tensor) -> Dict[str, np.ndarray]:
        """(B, N) tokens -> per-sample rows: pool (B, 2048), spatial (B, 2023), logits (B, 1008), float32
        (the network's own precision: half the bytes to gather, nothing lost)."""
        pool, spatial, logits = self.inception()(self.render(tokens))
        return {"pool": pool.astype(np.float32), "spatial": spatial.astype(np.float32),
                "logits": logits.astype(np.float32)}

    def score(self, features: Dict[str, np.ndarray], labels: np.ndarray) -> Dict[str, float]:
        """features: every process's rows in sample order -> fid, inception_score, sfid (when the reference
        has spatial statistics or images), precision and recall (when asked for)."""
        if self._reference is None:
            self._reference = load_reference(self.ref_path, self.inception(), self.with_precision_recall)
        reference = self._reference
        pool = features["pool"].astype(np.float64)
        results = {"fid": frechet_distance(*statistics(pool), reference.mu, reference.sigma),
                   "inception_score": inception_score(features["logits"].astype(np.float64))}
        if reference.mu_s is not None:
            results["sfid"] = frechet_distance(*statistics(features["spatial"].astype(np.float64)),
                                               reference.mu_s, reference.sigma_s)
        if reference.pool is not None:
            results["precision"], results["recall"] = precision_recall(reference.pool, pool)
        return results

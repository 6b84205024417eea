"""FID, sFID, Inception Score, precision and recall from Inception features, by the ADM definitions
(openai/guided-diffusion evaluations/evaluator.py)."""
from typing import Tuple

import numpy as np
from scipy import linalg


def statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(M, d) features -> mean (d,), covariance (d, d), in float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance of two Gaussians, with ADM's fallback when sqrtm(sigma1 sigma2) is singular."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm: statistics are degenerate")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """Mean over splits of exp(E[KL(p(y|x) || p(y))]), p(y|x) = softmax of the bias-free logits."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        kl = part * (np.log(part + 1e-30) - np.log(part.mean(axis=0, keepdims=True) + 1e-30))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


# ADM's DistanceBlock (TensorFlow on a GPU) computes pairwise distances in float16: squares, the
# float32-accumulated norms and matmul rounded to float16, combined in float16; only a block in which that
# overflows is redone in float32. Radii and the inside tests are made of these rounded distances, so
# precision and recall follow the same arithmetic (in float64 they were about a point off ADM's; see
# compare_with_adm.py).
DISTANCE_BLOCK = 10000  # ADM's row and column batch: the float32 fallback is decided per block


def _half_norms(features: np.ndarray) -> np.ndarray:
    return np.square(features).astype(np.float32).sum(axis=1).astype(np.float16)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances in float32, by ADM's arithmetic (see above)."""
    a16, b16 = np.asarray(a, dtype=np.float16), np.asarray(b, dtype=np.float16)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow sends the block to float32
        dot = (a16.astype(np.float32) @ b16.astype(np.float32).T).astype(np.float16)
        distances = _half_norms(a16)[:, None] - np.float16(2) * dot + _half_norms(b16)[None, :]
    if np.isfinite(distances).all():
        return np.maximum(distances, np.float16(0)).astype(np.float32)
    a32, b32 = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    norms_a, norms_b = np.square(a32).sum(axis=1), np.square(b32).sum(axis=1)
    return np.maximum(norms_a[:, None] - 2 * (a32 @ b32.T) + norms_b[None, :], np.float32(0))


def block_distances(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.concatenate([squared_distances(rows, columns[start:start + DISTANCE_BLOCK])
                           for start in range(0, len(columns), DISTANCE_BLOCK)], axis=1)


def manifold_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour (the point itself not counted)."""
    radii = np.empty(len(features), dtype=np.float32)
    for start in range(0, len(features), DISTANCE_BLOCK):
        distances = block_distances(features[start:start + DISTANCE_BLOCK], features)
        radii[start:start + DISTANCE_BLOCK] = np.partition(distances, kth=k, axis=1)[:, k]
    return radii


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = 3) -> Tuple[float, float]:
    """Precision: share of samples inside the reference manifold; recall: share of references inside the
    sample manifold. Both from the same (reference, sample) distance blocks, oriented as ADM's are (float16
    rounding depends on the order of the terms)."""
    radii_reference, radii_samples = manifold_radii(reference, k), manifold_radii(samples, k)
    reference_inside = np.zeros(len(reference), dtype=bool)
    samples_inside = np.zeros(len(samples), dtype=bool)
    for row in range(0, len(reference), DISTANCE_BLOCK):
        rows = slice(row, row + DISTANCE_BLOCK)
        for column in range(0, len(samples), DISTANCE_BLOCK):
            columns = slice(column, column + DISTANCE_BLOCK)
            distances = squared_distances(reference[rows], samples[columns])
            reference_inside[rows] |= (distances <= radii_samples[None, columns]).any(axis=1)
            samples_inside[columns] |= (distances <= radii_reference[rows, None]).any(axis=0)
    return float(samples_inside.mean()), float(reference_inside.mean())

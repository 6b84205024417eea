"""Our metrics against ADM's own evaluator code on the same features (no Inception network needed).

    pip install tensorflow-cpu scipy requests tqdm   # in a separate environment: TF pins numpy
    python -m evaluations.c2i.compare_with_adm --adm-evaluator guided-diffusion/evaluations/evaluator.py

Features are synthetic and Inception-like (non-negative, 2048 wide, clustered, squared norms near 650),
the sample set slightly shifted from the reference. ADM's code is imported from the given file and run
as it is, except for `np.bool`, which numpy >= 1.24 removed (an alias for bool is put back).
"""
import argparse
import importlib.util
import time

import numpy as np

from evaluations.c2i.metrics import frechet_distance, precision_recall, statistics


def inception_like_features(num: int, shift: float, seed: int, width: int = 2048) -> np.ndarray:
    """Points around 50 fixed centres (the same for every seed), moved by `shift`, clipped at 0."""
    centers = np.random.default_rng(0).gamma(0.7, 0.5, (50, width)) - 0.1
    rng = np.random.default_rng(seed)
    points = centers[rng.integers(0, len(centers), num)] + shift + rng.normal(0, 0.35, (num, width))
    return np.maximum(points, 0).astype(np.float32)


def load_adm(path: str):
    if "bool" not in vars(np):
        np.bool = bool  # ADM's evaluate_pr still spells the dtype this way
    spec = importlib.util.spec_from_file_location("adm_evaluator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def adm_metrics(adm, reference: np.ndarray, samples: np.ndarray) -> dict:
    """FID, precision and recall through ADM's own Evaluator methods. Its __init__ is skipped: it builds the
    Inception graph, which these methods do not use; they need only its ManifoldEstimator (a TF session)."""
    evaluator = adm.Evaluator.__new__(adm.Evaluator)
    evaluator.manifold_estimator = adm.ManifoldEstimator(adm.tf.Session())
    reference_stats, sample_stats = evaluator.compute_statistics(reference), evaluator.compute_statistics(samples)
    precision, recall = evaluator.compute_prec_recall(reference, samples)
    return {"FID": sample_stats.frechet_distance(reference_stats), "Precision": precision, "Recall": recall}


def our_metrics(reference: np.ndarray, samples: np.ndarray) -> dict:
    precision, recall = precision_recall(reference, samples)
    return {"FID": frechet_distance(*statistics(samples), *statistics(reference)), "Precision": precision, "Recall": recall}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adm-evaluator", required=True, help="openai/guided-diffusion evaluations/evaluator.py")
    parser.add_argument("--num", type=int, default=3000, help="features per set")
    args = parser.parse_args()
    reference, samples = inception_like_features(args.num, 0.0, seed=1), inception_like_features(args.num, 0.03, seed=2)
    results = {}
    for name, run in (("ADM", lambda: adm_metrics(load_adm(args.adm_evaluator), reference, samples)),
                      ("ours", lambda: our_metrics(reference, samples))):
        start = time.perf_counter()
        results[name] = run()
        print(f"{name}: {time.perf_counter() - start:.1f} s")
    print("| metric | ADM | ours |\n|---|---|---|")
    for metric in results["ADM"]:
        print(f"| {metric} | {results['ADM'][metric]:.6f} | {results['ours'][metric]:.6f} |")


if __name__ == "__main__":
    main()

import numpy as np
import pytest
import torch
from scipy import linalg

from evaluations.c2i.evaluator import evaluate
from evaluations.c2i.metrics import frechet_distance, inception_score, precision_recall, squared_distances, statistics


def test_fid_of_a_set_with_itself_is_zero_and_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    b = rng.normal(loc=0.5, scale=1.3, size=(2000, 8))
    assert frechet_distance(*statistics(a), *statistics(a)) == pytest.approx(0, abs=1e-6)
    (mu1, s1), (mu2, s2) = statistics(a), statistics(b)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)
    assert direct == pytest.approx(8 * 0.25 + 8 * (1 - 1.3) ** 2, rel=0.1)  # Gaussians' closed form


def test_inception_score_of_uniform_and_one_hot_predictions():
    assert inception_score(np.zeros((100, 10))) == pytest.approx(1.0)
    one_hot = np.full((100, 10), -1e4)
    one_hot[np.arange(100), np.arange(100) % 10] = 0
    assert inception_score(one_hot) == pytest.approx(10.0, rel=1e-6)


def test_precision_recall_on_toy_sets():
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    precision, recall = precision_recall(grid, grid + 0.1)
    assert precision == 1.0 and recall == 1.0
    far = np.concatenate([grid[:50] + 0.1, grid[:50] + 100])
    precision, recall = precision_recall(grid, far)
    assert precision == pytest.approx(0.5) and recall == pytest.approx(0.5, abs=0.11)


def test_distances_follow_adm_float16_arithmetic():
    """Worked by hand: 100 and 100.5 are float16 numbers; 100.5^2 = 10100.25 rounds to 10104, the dot
    product 10050 to 10048, so ADM gets 10000 - 2 * 10048 + 10104 = 8 where the exact answer is 0.25.
    300 and 301 overflow float16 (90,000 > 65,504): that block is redone in float32, giving 1."""
    assert squared_distances(np.array([[100.0]]), np.array([[100.5]]))[0, 0] == 8.0
    assert squared_distances(np.array([[300.0]]), np.array([[301.0]]))[0, 0] == 1.0
    rng = np.random.default_rng(0)
    a, b = rng.random((50, 64)), rng.random((40, 64))
    distances = squared_distances(a, b)
    assert distances.dtype == np.float32 and (distances.astype(np.float16) == distances).all()
    exact = ((a[:, None] - b[None]) ** 2).sum(-1)
    assert np.allclose(distances, exact, rtol=3e-3, atol=0.02)


def toy_features(images):
    """A tiny stand-in for Inception: fixed random projections of mean colours and pixels."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255
    rng = np.random.default_rng(0)
    pool = flat @ rng.normal(size=(flat.shape[1], 6))
    return pool, flat @ rng.normal(size=(flat.shape[1], 5)), flat @ rng.normal(size=(flat.shape[1], 4))


def write_batch(path, seed, n=64, **extra):
    images = np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    np.savez(path, arr_0=images, **extra)
    return images


def test_evaluator_with_and_without_stored_statistics(tmp_path):
    images = write_batch(tmp_path / "ref.npz", 0)
    write_batch(tmp_path / "sample.npz", 1)
    plain = evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), toy_features)
    assert set(plain) == {"Inception Score", "FID", "sFID", "Precision", "Recall"}
    pool, spatial, _ = toy_features(images)
    (mu, sigma), (mu_s, sigma_s) = statistics(pool), statistics(spatial)
    np.savez(tmp_path / "stats.npz", arr_0=images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    same = evaluate(str(tmp_path / "stats.npz"), str(tmp_path / "sample.npz"), toy_features)
    assert same["FID"] == pytest.approx(plain["FID"]) and same["sFID"] == pytest.approx(plain["sFID"])
    np.savez(tmp_path / "shifted.npz", arr_0=images, mu=mu + 10, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    shifted = evaluate(str(tmp_path / "shifted.npz"), str(tmp_path / "sample.npz"), toy_features)
    assert shifted["FID"] > plain["FID"] + 100 and shifted["sFID"] == pytest.approx(plain["sFID"])
    np.savez(tmp_path / "only_stats.npz", mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    no_images = evaluate(str(tmp_path / "only_stats.npz"), str(tmp_path / "sample.npz"), toy_features)
    assert "Precision" not in no_images and no_images["FID"] == pytest.approx(plain["FID"])


def test_bad_sample_batches_and_missing_weights(tmp_path):
    write_batch(tmp_path / "ref.npz", 0)
    broken = np.full((4, 8, 8, 3), np.nan, dtype=np.float32)
    np.savez(tmp_path / "nan.npz", arr_0=broken)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "nan.npz"), toy_features)
    np.savez(tmp_path / "gray.npz", arr_0=np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "gray.npz"), toy_features)
    from evaluations.c2i.inception import InceptionFeatures
    with pytest.raises(FileNotFoundError, match="--inception-weights"):
        InceptionFeatures(str(tmp_path / "missing.pth"))


def test_inception_network_gives_the_adm_feature_sizes(tmp_path, monkeypatch):
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from evaluations.c2i.inception import InceptionFeatures

    monkeypatch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    monkeypatch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
    torch.manual_seed(0)
    random_weights = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(random_weights, tmp_path / "random.pth")
    monkeypatch.undo()
    features = InceptionFeatures(str(tmp_path / "random.pth"), batch_size=2)
    pool, spatial, logits = features(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    assert pool.shape == (3, 2048) and spatial.shape == (3, 2023) and logits.shape == (3, 1008)


FAKE_ADM = '''
import numpy as np
from evaluations.c2i import metrics


class tf:  # stands in for tensorflow.compat.v1
    Session = object


class FIDStatistics:
    def __init__(self, mu, sigma):
        self.mu, self.sigma = mu, sigma

    def frechet_distance(self, other):
        return metrics.frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


class Evaluator:  # ADM's methods that need no Inception graph
    def compute_statistics(self, activations):
        return FIDStatistics(np.mean(activations, axis=0), np.cov(activations, rowvar=False))

    def compute_prec_recall(self, activations_ref, activations_sample):
        radii_1 = self.manifold_estimator.manifold_radii(activations_ref)
        radii_2 = self.manifold_estimator.manifold_radii(activations_sample)
        pr = self.manifold_estimator.evaluate_pr(activations_ref, radii_1, activations_sample, radii_2)
        return float(pr[0][0]), float(pr[1][0])


class ManifoldEstimator:  # ADM's interface: radii (N, 1); evaluate_pr -> (precision, recall) arrays
    def __init__(self, session):
        pass

    def manifold_radii(self, features):
        return metrics.manifold_radii(features)[:, None]

    def evaluate_pr(self, features_1, radii_1, features_2, radii_2):
        distances = metrics.squared_distances(features_1, features_2)
        return (np.array([(distances <= radii_1).any(axis=0).mean()]),
                np.array([(distances <= radii_2[:, 0]).any(axis=1).mean()]))
'''


def test_compare_with_adm_runs_an_evaluator_file_on_shared_features(tmp_path):
    """The comparison tool imports ADM's evaluator.py from a path and feeds both sides the same sets (a
    stand-in file with ADM's interface here: TensorFlow is not a test dependency)."""
    from evaluations.c2i.compare_with_adm import adm_metrics, inception_like_features, load_adm, our_metrics

    (tmp_path / "evaluator.py").write_text(FAKE_ADM)
    reference, samples = (inception_like_features(300, shift, seed, width=64) for shift, seed in ((0.0, 1), (0.2, 2)))
    ours = our_metrics(reference, samples)
    assert 0 < ours["Precision"] < 1 and 0 < ours["Recall"] < 1 and ours["FID"] > 0
    theirs = adm_metrics(load_adm(str(tmp_path / "evaluator.py")), reference, samples)
    assert theirs == pytest.approx(ours, rel=1e-6)

"""The evaluator without --inception-weights: torch-fidelity's download into the torch hub cache, reused
from there; offline, one line naming the file to download and where it goes."""
import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity

from conftest import free_port
from evaluations.c2i.inception import WEIGHTS_URL, InceptionFeatures


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache, and every HTTP(S) request sent to a proxy port nobody listens on."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_offline_without_weights_says_what_to_download_and_where(offline):
    with pytest.raises(FileNotFoundError) as error:
        InceptionFeatures()
    message = str(error.value)
    assert "\n" not in message and WEIGHTS_URL in message
    assert "--inception-weights" in message and str(offline) in message


def test_weights_in_the_torch_hub_cache_are_used_without_network(offline, monkeypatch):
    with monkeypatch.context() as patch:  # random weights, built without any file
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        torch.manual_seed(0)
        random_weights = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    offline.mkdir(parents=True)
    torch.save(random_weights, offline / WEIGHTS_URL.rsplit("/", 1)[1])
    features = InceptionFeatures(batch_size=2)
    assert torch.equal(features.net.fc.weight, random_weights["fc.weight"])
    pool, _, _ = features(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    assert pool.shape == (1, 2048)

"""The 2015 Inception-v3 of the TensorFlow FID graph, in PyTorch (torch-fidelity's port): pool_3 features
(2048) for FID and precision/recall, the first 7 channels of mixed_6/conv (7 x 17 x 17 = 2023) for sFID,
and bias-free logits (1008) for the Inception Score.

Weights: torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` from
https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth,
a local file, or, when none is given, torch-fidelity's own download into the torch hub cache
($TORCH_HOME/hub/checkpoints, reused once there).
"""
import os
from typing import Optional

import numpy as np
import torch

from autoregressive.utils.cli import InputNotFound

WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth")
SPATIAL_CHANNELS = 7


def check_weights_file(weights_path: Optional[str]) -> None:
    """None passes: torch-fidelity then downloads the weights (see InceptionFeatures)."""
    if weights_path is not None and not os.path.isfile(weights_path):
        raise InputNotFound(f"Inception weights not found: {weights_path!r}. Download {WEIGHTS_URL} "
                            "and pass its path with --inception-weights")


class InceptionFeatures:
    """Calls torch-fidelity's InceptionV3 on uint8 NHWC batches and returns numpy features."""

    def __init__(self, weights_path: Optional[str] = None, device="cpu", batch_size: int = 64):
        check_weights_file(weights_path)
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:  # without a path, torch-fidelity downloads the weights (or finds them in the torch hub cache)
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=weights_path).to(device)
        except OSError as error:  # urllib's errors when offline
            if weights_path is not None:
                raise
            cache = os.path.join(torch.hub.get_dir(), "checkpoints")
            raise InputNotFound(f"Inception weights could not be downloaded ({error}). Download {WEIGHTS_URL} "
                                    f"and pass its path with --inception-weights, or put it in {cache}") from None
        self.device, self.batch_size = device, batch_size
        self._spatial = []
        # TF's mixed_6/conv is the 1x1 branch (after its ReLU) of the 17x17 block torchvision calls Mixed_6d.
        self.net.Mixed_6d.branch1x1.register_forward_hook(lambda module, inputs, output: self._spatial.append(output))

    @torch.no_grad()
    def __call__(self, images: np.ndarray):
        """images (M, H, W, 3) uint8 -> pool (M, 2048), spatial (M, 2023), logits (M, 1008) float64."""
        pools, spatials, logits = [], [], []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
            batch = batch.permute(0, 3, 1, 2).to(self.device)
            self._spatial.clear()
            pool, logit = self.net(batch)
            spatial = self._spatial[0][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # NHWC order, as TF
            pools.append(pool.double().cpu().numpy())
            spatials.append(spatial.double().cpu().numpy())
            logits.append(logit.double().cpu().numpy())
        return np.concatenate(pools), np.concatenate(spatials), np.concatenate(logits)

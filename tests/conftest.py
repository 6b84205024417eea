"""Tiny CPU configurations and helpers shared by the tests."""

import pytest
import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.utils.dist import free_port  # noqa: F401 (the tests import it from here)

TINY = dict(vocab_size=32, num_classes=5, block_size=16)


def build_tiny(seed: int = 0, **overrides):
    """A tiny ARPG (2 self + 2 cross layers, dim 64) with a random, non-zero head, in eval mode."""
    torch.manual_seed(seed)
    model = ARPG_models["ARPG-tiny"](**{**TINY, **overrides})
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


@pytest.fixture
def tiny_model():
    return build_tiny()


@pytest.fixture(autouse=True)
def few_threads():
    torch.set_num_threads(1)

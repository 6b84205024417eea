"""Tiny CPU configurations and helpers shared by the tests."""
import socket

import pytest
import torch

from autoregressive.models.arpg import ARPG_models

TINY = dict(vocab_size=32, num_classes=5, block_size=16)


def build_tiny(seed: int = 0, **overrides):
    """A tiny ARPG (2 self + 2 cross layers, dim 64) with a random, non-zero head, in eval mode."""
    torch.manual_seed(seed)
    model = ARPG_models["ARPG-tiny"](**{**TINY, **overrides})
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's process group."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tiny_model():
    return build_tiny()


@pytest.fixture(autouse=True)
def few_threads():
    torch.set_num_threads(1)

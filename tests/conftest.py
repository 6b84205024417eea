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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """finished_run(*flags) -> (codes, results, output): test_train_c2i's tiny 2-process gloo run with these
    extra flags, launched once a session and shared by the tests that start from the same run (a launch
    is mostly process start-up). Read it only: copy_run (test_train_c2i) makes a copy to resume in."""
    from test_train_c2i import finish, launch, write_codes

    runs = {}

    def run(*extra):
        if extra not in runs:
            root = tmp_path_factory.mktemp("finished-run")
            write_codes(root / "codes")
            output = finish(launch(root / "codes", root / "results", list(extra)))
            runs[extra] = (root / "codes", root / "results", output)
        return runs[extra]
    return run


@pytest.fixture(autouse=True)
def few_threads():
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def grad_mode_left_as_found():
    """A test that leaves autograd switched off process-wide (a main() calling torch.set_grad_enabled) would
    fail every training test after it with an unrelated error: it fails itself instead."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("the test left autograd off (torch.set_grad_enabled(False)); use torch.no_grad() instead")

"""scripts/bench_cache_kernels.py: --flashinfer without the optional package is one clear error."""
import importlib.util

import pytest

from autoregressive.utils.cli import UserError
from scripts import bench_cache_kernels


def test_flashinfer_flag_without_the_package_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flashinfer" else real_find_spec(name, *a))
    with pytest.raises(UserError, match=r"--flashinfer needs the optional flashinfer-python package \(pip install"):
        bench_cache_kernels.main(["--flashinfer"])

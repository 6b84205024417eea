"""The CFG sweep on a random digits model: CSV rows, plot, best-scale line, ADM path, two processes."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoregressive.models.arpg import ARPG_models
from scripts.sweep_cfg import get_args_parser, main
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def digits_ckpt(tmp_path):
    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"]()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the head starts at zero: guidance would change nothing
    path = tmp_path / "digits.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def flags(ckpt, out_dir, *extra):
    return ["--gpt-model", "ARPG-digits", "--gpt-ckpt", str(ckpt), "--cfg-scales", "1", "3", "--num-samples", "20",
            "--per-proc-batch-size", "8", "--step", "4", "--device", "cpu", "--out-dir", str(out_dir), *extra]


def read_rows(out_dir):
    with open(out_dir / "sweep.csv") as file:
        return list(csv.DictReader(file))


def test_digits_sweep_writes_csv_plot_and_best_scale(digits_ckpt, tmp_path, capsys):
    rows = main(get_args_parser().parse_args(flags(digits_ckpt, tmp_path / "sweep")))
    written = read_rows(tmp_path / "sweep")
    assert [(row["cfg_schedule"], float(row["cfg_scale"]), int(row["num_samples"])) for row in written] == [
        ("linear", 1.0, 20), ("linear", 3.0, 20), ("constant", 1.0, 20), ("constant", 3.0, 20)]
    assert [float(row["FD (PCA-20)"]) for row in written] == pytest.approx([row["FD (PCA-20)"] for row in rows])
    assert all(0 <= float(row["class accuracy"]) <= 1 for row in written)
    assert rows[0]["FD (PCA-20)"] != rows[1]["FD (PCA-20)"]  # the scale reaches the sampler
    with Image.open(tmp_path / "sweep" / "sweep.png") as plot:
        assert plot.size[0] > 400 and plot.size[1] > 200
    best = min(rows, key=lambda row: row["FD (PCA-20)"])
    out = capsys.readouterr().out
    assert f"best cfg scale: {best['cfg_scale']:g} with the {best['cfg_schedule']} schedule" in out
    assert out.count("schedule: best cfg scale") == 2


class ToyInception:
    """Stands in for the Inception network: fixed projections of the pixels; counts its calls."""
    calls = 0

    def __init__(self, weights_path, device="cpu", batch_size=64):
        pass

    def __call__(self, images):
        ToyInception.calls += 1
        flat = images.reshape(len(images), -1).astype(np.float64) / 255
        rng = np.random.default_rng(0)
        return tuple(flat @ rng.normal(size=(flat.shape[1], width)) for width in (6, 5, 10))


def test_adm_metrics_path_scores_every_scale_and_reuses_reference_features(digits_ckpt, tmp_path, monkeypatch):
    import evaluations.c2i.inception

    monkeypatch.setattr(evaluations.c2i.inception, "InceptionFeatures", ToyInception)
    reference = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=reference)
    (tmp_path / "inception.pth").write_bytes(b"")
    out_dir = tmp_path / "sweep"
    main(get_args_parser().parse_args(flags(digits_ckpt, out_dir, "--cfg-schedules", "constant",
                                            "--ref-batch", str(tmp_path / "ref.npz"),
                                            "--inception-weights", str(tmp_path / "inception.pth"))))
    rows = read_rows(out_dir)
    assert len(rows) == 2 and {"FID", "Inception Score", "Precision", "Recall", "sFID"} <= set(rows[0])
    assert ToyInception.calls == 1 + 2  # the reference once, then each scale's samples
    with np.load(out_dir / "cfg-3-constant.npz") as samples:
        assert samples["arr_0"].shape == (20, 8, 8, 3) and samples["arr_0"].dtype == np.uint8
    assert not list((out_dir / "parts").rglob("*.npz"))


def test_bad_inputs_are_explained(digits_ckpt, tmp_path):
    with pytest.raises(ValueError, match="scoring images needs --ref-batch"):
        main(get_args_parser().parse_args(flags(digits_ckpt, tmp_path, "--vq-ckpt", str(digits_ckpt))))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        main(get_args_parser().parse_args(flags(tmp_path / "missing.pt", tmp_path)))


def test_two_gloo_processes_give_the_figures_of_one(digits_ckpt, tmp_path):
    one = tmp_path / "one"
    main(get_args_parser().parse_args(flags(digits_ckpt, one, "--cfg-schedules", "linear")))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "scripts.sweep_cfg", *flags(digits_ckpt, tmp_path / "two", "--cfg-schedules", "linear")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_rows(one) == read_rows(tmp_path / "two")

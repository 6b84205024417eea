"""Watching a run (autoregressive/train/monitor.py): grids and evaluations at the right steps, metrics.csv,
a training run bitwise unchanged by them, the schedule across --resume, failed evaluations."""
import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import train_c2i
from autoregressive.generate import generate
from autoregressive.sampling import SamplingConfig
from autoregressive.train.checkpoint import load_checkpoint
from autoregressive.train.monitor import sample_share, untouched_random_state
from autoregressive.utils.cli import run_main
from conftest import build_tiny
from test_train_c2i import train_flags, write_codes

WATCH = ["--sample-every", "2", "--eval-every", "2", "--eval-num-images", "20", "--eval-batch-size", "8",
         "--eval-step", "4", "--eval-cfg-scale", "2.0"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from dataset.digits import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(str(root))
    return root / "train"


def train_digits(digits: Path, results: Path, extra=()):
    """A few steps of the demo model (batch 16, checkpoints every 2 steps), with dropout and EMA."""
    run_main(train_c2i.cli, ["--gpt-model", "ARPG-digits", "--dataset", "digits", "--code-path", str(digits),
                             "--results-dir", str(results), "--global-batch-size", "16", "--lr", "2e-3",
                             "--epochs", "2", "--warmup-epochs", "1", "--ckpt-every", "2", "--log-every", "2",
                             "--num-workers", "0", "--num-threads", "1", "--device", "cpu", "--no-compile", "--ema",
                             *extra])
    return results / "000-ARPG-digits"


def metric_rows(run: Path):
    with open(run / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def assert_same_state(a, b):
    assert a.progress == b.progress
    for name in ("model", "ema"):
        left, right = getattr(a, name), getattr(b, name)
        assert left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left), name
    assert torch.equal(a.rng[0]["cpu"], b.rng[0]["cpu"])
    states_a, states_b = a.optimizer["state"], b.optimizer["state"]
    assert all(torch.equal(states_a[i][key], states_b[i][key]) for i in states_a for key in states_a[i])


def test_grids_and_evaluations_leave_the_training_run_bitwise_unchanged(digits, tmp_path):
    plain = train_digits(digits, tmp_path / "plain", ["--max-steps", "4"])
    watched = train_digits(digits, tmp_path / "watched", ["--max-steps", "4", *WATCH])
    for step in (2, 4):
        name = f"{step:07d}.pt"
        assert_same_state(load_checkpoint(str(plain / "checkpoints" / name)),
                          load_checkpoint(str(watched / "checkpoints" / name)))
    assert sorted(path.name for path in (watched / "grids").iterdir()) == ["0000002.png", "0000004.png"]
    rows = metric_rows(watched)
    assert [row["step"] for row in rows] == ["2", "4"]
    assert set(rows[0]) == {"step", "class_accuracy", "frechet_distance"}
    assert 0 <= float(rows[0]["class_accuracy"]) <= 1 and float(rows[0]["frechet_distance"]) > 0
    assert (watched / "metrics.png").stat().st_size > 0
    log = (watched / "log.txt").read_text()
    assert "step 0000004 eval of 20 samples: class_accuracy" in log and "grids/0000002.png" in log
    assert not (plain / "grids").exists() and not (plain / "metrics.csv").exists()


def test_the_schedule_carries_on_across_resume_without_duplicate_rows(digits, tmp_path):
    run = train_digits(digits, tmp_path, ["--max-steps", "4", *WATCH])
    (run / "checkpoints" / "0000004.pt").unlink()  # killed after the step-4 evaluation, before its checkpoint
    train_digits(digits, tmp_path, ["--max-steps", "6", "--resume", *WATCH])
    assert [row["step"] for row in metric_rows(run)] == ["2", "4", "6"]
    assert sorted(path.name for path in (run / "grids").iterdir()) == ["0000002.png", "0000004.png", "0000006.png"]


def tiny_run_flags(tmp_path: Path, extra):
    codes = tmp_path / "codes"
    write_codes(codes)
    return train_flags(codes, tmp_path / "results", ["--max-steps", "4", "--eval-every", "2",
                                                     "--eval-ref-batch", str(tmp_path / "missing.npz"), "--eval-step", "4",
                                                     *extra])[1:]


def test_a_failed_evaluation_logs_one_line_and_training_goes_on(tmp_path):
    run_main(train_c2i.cli, tiny_run_flags(tmp_path, []))
    run = tmp_path / "results" / "000-ARPG-tiny"
    assert (run / "checkpoints" / "0000003.pt").exists() and (run / "checkpoints" / "0000004.pt").exists()
    failures = [line for line in (run / "log.txt").read_text().splitlines() if "evaluation failed" in line]
    assert len(failures) == 2 and "step 0000002: the evaluation failed" in failures[0]
    assert "missing.npz: not found" in failures[0] and "training goes on" in failures[0]


def test_stop_on_eval_error_ends_the_run_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_c2i.cli, tiny_run_flags(tmp_path, ["--stop-on-eval-error"]))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "error: step 0000002: the evaluation failed" in stderr


def test_eval_every_without_a_reference_is_refused_before_training():
    args = train_c2i.get_args_parser().parse_args(["--code-path", "x", "--eval-every", "100"])
    with pytest.raises(ValueError, match="--eval-every needs --eval-ref-batch"):
        train_c2i.config_from_args(args)


def test_the_evaluation_samples_do_not_depend_on_the_number_of_processes():
    model, sampling = build_tiny(), SamplingConfig(num_steps=4, cfg_scale=2.0)
    sampler = lambda labels, config, generator: generate(model, labels, config, generator=generator)

    def samples(world_size):
        found = {}
        for rank in range(world_size):
            sample_share(sampler, sampling, 7, 3, 5, 0, rank, world_size, "cpu",
                         lambda indices, tokens: found.update(zip(indices.tolist(), tokens)))
        return found

    one, two = samples(1), samples(2)
    assert sorted(one) == sorted(two) == list(range(7))
    assert all(torch.equal(one[i], two[i]) for i in one)


def test_random_states_are_put_back():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    with untouched_random_state(torch.device("cpu")):
        torch.rand(5), np.random.rand(5), random.random()
    after = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


def fake_features(images: np.ndarray):
    """Stand-in for the Inception network: cheap deterministic features of the pixels."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255
    return flat[:, :6], flat[:, 6:10], flat[:, :8] * 3


def test_the_inception_judge_gives_the_evaluators_figures(tmp_path):
    from evaluations.c2i.evaluator import evaluate
    from evaluations.c2i.judge import InceptionJudge

    rng = np.random.default_rng(0)
    reference, samples = (rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8) for _ in range(2))
    np.savez(tmp_path / "ref.npz", arr_0=reference)
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    expected = evaluate(str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), fake_features)
    judge = InceptionJudge(str(tmp_path / "ref.npz"), lambda tokens: samples[tokens.numpy()], None, "cpu",
                           with_precision_recall=True, features=fake_features)
    halves = [judge.features(torch.arange(start, start + 20)) for start in (0, 20)]
    rows = {key: np.concatenate([half[key] for half in halves]) for key in halves[0]}
    figures = judge.score(rows, np.zeros(40))
    assert figures == pytest.approx({"fid": expected["FID"], "inception_score": expected["Inception Score"],
                                     "sfid": expected["sFID"], "precision": expected["Precision"],
                                     "recall": expected["Recall"]}, rel=1e-5)


def test_two_processes_evaluate_the_same_samples_as_one(digits, tmp_path):
    """At learning rate 0 the weights stay the initial ones, so the figures of a 2-process gloo run (each
    rank sampling its batches, rank 0 gathering) must equal the one-process run's."""
    import os
    import subprocess
    import sys

    from conftest import free_port

    flags = ["--max-steps", "2", "--lr", "0", "--min-lr", "0", "--eval-every", "2", "--eval-num-images", "20",
             "--eval-batch-size", "8", "--eval-step", "4", "--eval-cfg-scale", "2.0"]
    one = train_digits(digits, tmp_path / "one", flags)
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(root / "train_c2i.py"), "--gpt-model", "ARPG-digits", "--dataset", "digits", "--code-path",
               str(digits), "--results-dir", str(tmp_path / "two"), "--global-batch-size", "16", "--epochs", "2",
               "--warmup-epochs", "1", "--ckpt-every", "2", "--num-workers", "0", "--num-threads", "1",
               "--device", "cpu", "--no-compile", "--ema", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert metric_rows(tmp_path / "two" / "000-ARPG-digits") == metric_rows(one)

"""Ending a run early without losing work (train/stopping.py and its uses in train/loop.py): stop signals to
the launcher or one worker, the time limit, divergence, --keep-last and failing checkpoint writes."""
import errno
import os
import re
import signal
import threading
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train_c2i
from autoregressive.train.checkpoint import CheckpointWriteFailed, load_checkpoint, prune_checkpoints, save_checked
from autoregressive.train.stopping import (DIVERGED_EXIT_CODE, STOPPED_EXIT_CODE, Diverged, StopAgreement,
                                           parse_deadline)
from autoregressive.utils.cli import run_main
from test_train_c2i import DDP_RUN, finish, launch, train_flags, write_codes
from test_watchdog import children_of, drain

CPU = torch.device("cpu")
RUN = "000-ARPG-tiny"


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """A stopped run ignores the stop signals on its way out; give the test process its handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_inline(codes, results, extra, capsys):
    """train_c2i.py in this process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        run_main(train_c2i.cli, train_flags(codes, results, extra)[1:])
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def checkpoint_names(results):
    return sorted(path.name for path in (results / RUN / "checkpoints").iterdir())


def logged_losses(output: str):
    return dict(re.findall(r"step (\d+) loss (\S+)", output))


# ---- the agreement between ranks, without training -------------------------------------------------------

def agree(rank: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    report = {}
    agreement = StopAgreement(CPU)
    finite, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    steps = []
    for step in range(1, 4):
        if rank == 1 and step == 2:
            agreement.received.signal_name = "SIGUSR1"  # as the handler does, on this rank only
        steps.append(agreement.after_step(step, finite, finite))
    report["stop"] = steps
    try:
        agreement.after_step(4, finite, finite)
        agreement.after_step(5, nan if rank == 1 else finite, finite)
        agreement.after_step(6, finite, finite)
    except Diverged as error:
        report["diverged"] = str(error)
    original_save = torch.save

    def disk_full(payload, path):
        with open(path, "wb") as file:
            file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    torch.save = disk_full
    try:
        save_checked({"step": 1}, os.path.join(out_dir, "run", "checkpoints", "0000001.pt"), rank == 0, CPU)
    except CheckpointWriteFailed as error:
        report["write"] = str(error)
    finally:
        torch.save = original_save
    torch.save(report, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_ranks_agree_on_a_stop_a_divergence_and_a_failed_write_seen_by_one_rank(tmp_path):
    """A stop request on rank 1 stops both ranks after the same step (one step later: the reduce is read a
    step late unless a checkpoint is due); a NaN loss on rank 1 raises on both, naming its step; a write
    that fails on rank 0 raises on rank 1 too instead of leaving it waiting."""
    mp.spawn(agree, args=(str(tmp_path),), nprocs=2, join=True)
    reports = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    for report in reports:
        assert report["stop"] == [None, None, "a stop signal"]
        assert "non-finite at step 5" in report["diverged"] and "lower --lr" in report["diverged"]
        assert "could not write checkpoint 0000001.pt" in report["write"]
    assert "No space left on device" in reports[0]["write"]
    assert os.listdir(tmp_path / "run" / "checkpoints") == []  # no partial file


def test_time_limit_and_deadline():
    assert StopAgreement(CPU, time_limit_minutes=0).after_step(1, torch.tensor(1.0), None, settle=True) == "the time limit"
    assert StopAgreement(CPU, time_limit_minutes=60).after_step(1, torch.tensor(1.0), None, settle=True) is None
    past = parse_deadline("2020-01-01T00:00")
    assert StopAgreement(CPU, deadline=past).after_step(1, torch.tensor(1.0), None, settle=True) == "the time limit"
    with pytest.raises(ValueError, match="--deadline 'tomorrow' is not a date"):
        train_c2i.config_from_args(train_c2i.get_args_parser().parse_args(["--code-path", "x", "--deadline", "tomorrow"]))


def test_fp16_loss_scaling_may_skip_steps_with_infinite_gradients():
    agreement = StopAgreement(CPU, check_grad_norm=False)
    assert agreement.after_step(1, torch.tensor(1.0), torch.tensor(float("inf")), settle=True) is None
    with pytest.raises(Diverged, match="gradient norm became non-finite at step 1"):
        StopAgreement(CPU).after_step(1, torch.tensor(1.0), torch.tensor(float("inf")), settle=True)


def test_keep_last_keeps_the_newest_and_the_one_just_written(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (3, 6, 9, 12):
        (folder / f"{step:07d}.pt").write_bytes(b"x")
    (folder / "0000015").mkdir()  # an incomplete sharded folder is no checkpoint: left alone
    prune_checkpoints(str(tmp_path), 2, keep=str(folder / "0000006.pt"))  # resumed from an earlier step
    assert sorted(os.listdir(folder)) == ["0000006.pt", "0000012.pt", "0000015"]
    prune_checkpoints(str(tmp_path), None, keep=str(folder / "0000006.pt"))
    assert sorted(os.listdir(folder)) == ["0000006.pt", "0000012.pt", "0000015"]


# ---- one process, train_c2i.py in this process ------------------------------------------------------------

def test_time_limit_stops_with_a_checkpoint_and_keep_last_prunes(tmp_path, capsys):
    codes, results = tmp_path / "codes", tmp_path / "results"
    write_codes(codes)
    code, out, _ = run_inline(codes, results, ["--time-limit", "0", "--ckpt-every", "1", "--keep-last", "1"], capsys)
    assert code == STOPPED_EXIT_CODE and "stopped at step 1 on the time limit" in out
    assert checkpoint_names(results) == ["0000001.pt"]
    code, out, _ = run_inline(codes, results, ["--resume", "--max-steps", "5", "--ckpt-every", "1",
                                               "--keep-last", "2"], capsys)
    assert code == 0 and "resumed from" in out
    assert checkpoint_names(results) == ["0000004.pt", "0000005.pt"]


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_a_non_finite_step_stops_the_run_and_nothing_after_it_is_saved(tmp_path, capsys, monkeypatch, what):
    from autoregressive.train.loop import Trainer

    codes, results = tmp_path / "codes", tmp_path / "results"
    write_codes(codes)
    real_step = Trainer.optimizer_step

    def step_going_wrong_at_5(self, batches):
        loss = real_step(self, batches)
        if self.progress.step + 1 == 5:
            if what == "loss":
                return torch.full_like(loss, float("nan"))
            self.grad_norm = torch.tensor(float("inf"))
        return loss

    monkeypatch.setattr(Trainer, "optimizer_step", step_going_wrong_at_5)
    code, _, err = run_inline(codes, results, ["--max-steps", "9"], capsys)
    assert code == DIVERGED_EXIT_CODE
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert f"the {what} became non-finite at step 5" in errors[0] and "lower --lr" in errors[0]
    assert checkpoint_names(results) == ["0000003.pt"]  # the step-6 checkpoint was not written


def test_resume_skips_a_non_finite_checkpoint_of_older_code(tmp_path, capsys):
    codes, results = tmp_path / "codes", tmp_path / "results"
    write_codes(codes)
    assert run_inline(codes, results, ["--max-steps", "6"], capsys)[0] == 0
    newest = results / RUN / "checkpoints" / "0000006.pt"
    payload = torch.load(newest, weights_only=True)
    payload["optimizer"]["state"][0]["exp_avg"].fill_(float("nan"))  # as a diverged run of older code saved it
    torch.save(payload, newest)
    code, _, err = run_inline(codes, results, ["--max-steps", "9", "--resume", str(newest)], capsys)
    assert code == 2 and "0000006.pt holds non-finite weights or optimizer state" in err  # named: refused
    code, out, _ = run_inline(codes, results, ["--max-steps", "9", "--resume"], capsys)
    assert code == 0 and "resumed from" in out and "0000003.pt at step 3" in out
    assert torch.isfinite(load_checkpoint(str(results / RUN / "checkpoints" / "0000009.pt")).model["head.weight"]).all()


def test_a_failing_checkpoint_write_keeps_the_previous_one_and_names_the_folder(tmp_path, capsys, monkeypatch):
    codes, results = tmp_path / "codes", tmp_path / "results"
    write_codes(codes)
    real_save, writes = torch.save, []

    def full_after_the_first(payload, path, *args, **kwargs):
        writes.append(path)
        if len(writes) == 1:
            return real_save(payload, path, *args, **kwargs)
        with open(path, "wb") as file:
            file.write(b"the start of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_after_the_first)
    code, _, err = run_inline(codes, results, ["--max-steps", "9"], capsys)
    folder = results / RUN / "checkpoints"
    assert code == 74
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"in {folder} (No space left on device)" in errors[0]
    assert "0000003.pt, is intact" in errors[0]
    assert checkpoint_names(results) == ["0000003.pt"]  # no partial 0000006
    monkeypatch.undo()
    assert load_checkpoint(str(folder / "0000003.pt")).progress.step == 3


# ---- two gloo processes under torchrun ----------------------------------------------------------------------

STEPS = ["--max-steps", "12", "--log-every", "1", "--ckpt-every", "100"]


def stop_after(process, step: int, send) -> str:
    """Once `process` logged `step`, call send(process); returns its output once it ended."""
    output = []
    reader = threading.Thread(target=drain, args=(process.stdout, output), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while f"step {step:07d} loss" not in "".join(output):
        assert process.poll() is None and time.time() < deadline, "".join(output)
        time.sleep(0.02)
    send(process)
    process.wait(timeout=240)
    # Workers hold the pipe too: wait for its end of file, so the lines of workers that outlive a killed
    # launcher (finishing their checkpoint) are read.
    reader.join(timeout=120)
    return "".join(output)


def sigterm_to_the_launcher(process):
    os.kill(process.pid, signal.SIGTERM)


def sigusr1_to_rank_1(process):
    workers = children_of(process.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGUSR1)  # the later-started worker: rank 1


def test_stop_signals_checkpoint_all_ranks_and_the_resumes_equal_the_uninterrupted_run(tmp_path, finished_run):
    """Two gloo processes, 12 steps: SIGTERM to torchrun (which forwards it to both workers), then after a
    --resume SIGUSR1 to rank 1 alone. Each time both ranks stop after the same step with one complete
    checkpoint; the second --resume reaches step 12 with the uninterrupted run's weights, EMA, AdamW state
    and logged losses, bit for bit. The uninterrupted run is the one other tests share (it also writes a
    checkpoint every 3 steps, which must change nothing)."""
    codes, uninterrupted, whole_output = finished_run(*DDP_RUN)
    whole = load_checkpoint(str(uninterrupted / RUN / "checkpoints" / "0000012.pt"))

    results = tmp_path / "results"
    first = stop_after(launch(codes, results, STEPS), 2, sigterm_to_the_launcher)
    first_step = int(re.search(r"stopped at step (\d+) on a stop signal", first).group(1))
    assert first_step < 10 and checkpoint_names(results) == [f"{first_step:07d}.pt"]  # no temporary file
    second = stop_after(launch(codes, results, [*STEPS, "--resume"]), first_step + 1, sigusr1_to_rank_1)
    second_step = int(re.search(r"stopped at step (\d+) on a stop signal", second).group(1))
    assert f"at step {first_step}" in second and first_step < second_step < 12
    assert second.count(f"exitcode  : {STOPPED_EXIT_CODE}") == 2, second  # both ranks, not killed by torchrun
    assert checkpoint_names(results) == [f"{first_step:07d}.pt", f"{second_step:07d}.pt"]

    resumed = finish(launch(codes, results, [*STEPS, "--resume"]))
    assert f"at step {second_step}" in resumed
    losses = {**logged_losses(first), **logged_losses(second), **logged_losses(resumed)}
    assert losses == logged_losses(whole_output) and len(losses) == 12
    final = load_checkpoint(str(results / RUN / "checkpoints" / "0000012.pt"))
    assert final.progress == whole.progress
    for part in ("model", "ema"):
        for key, value in getattr(whole, part).items():
            assert torch.equal(getattr(final, part)[key], value), f"{part} {key}"
    for index, state in whole.optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(final.optimizer["state"][index][name], value), f"AdamW {name} of {index}"


def test_a_signal_that_kills_the_launcher_still_leaves_one_complete_checkpoint(tmp_path):
    """As on a cluster that signals every process of the job: SIGUSR1 to torchrun (whose default signal
    list lacks it, so it dies) and to both workers. The orphan watchdog lets the stop under way finish its
    checkpoint before it ends the workers, instead of cutting them short."""
    from test_watchdog import running

    codes, results = tmp_path / "codes", tmp_path / "results"
    write_codes(codes)
    workers = []

    def everyone(process):
        workers.extend(children_of(process.pid))
        for pid in [process.pid, *workers]:
            os.kill(pid, signal.SIGUSR1)

    output = stop_after(launch(codes, results, ["--max-steps", "100000", "--epochs", "100000", "--log-every", "1"]),
                        2, everyone)
    ended = time.time()
    while any(map(running, workers)) and time.time() < ended + 60:
        time.sleep(0.1)
    assert len(workers) == 2 and not any(map(running, workers)), output
    assert "the torchrun launcher" in output and "Traceback" not in output
    step = int(re.search(r"stopped at step (\d+) on a stop signal", output).group(1))
    assert checkpoint_names(results) == [f"{step:07d}.pt"]
    assert load_checkpoint(str(results / RUN / "checkpoints" / f"{step:07d}.pt")).progress.step == step

"""scripts/slurm/: the batch shell turns SLURM's warning signal into a stop of the run and a requeue, with
fake torchrun, srun, scancel and scontrol commands (the real cluster run is described in docs/reliability.md)."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "scripts" / "slurm" / "requeue_on_signal.sh"
# A stand-in for torchrun: reports when it runs, stops with the stop code on SIGTERM (as train_c2i.py does).
TRAINER = """#!/usr/bin/env bash
trap 'echo "$(basename "$0") got TERM" >> "$LOG"; exit 75' TERM
echo started >> "$LOG"
while true; do sleep 0.05; done
"""


def fake_commands(folder: Path) -> None:
    for name in ("scontrol", "scancel"):
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$LOG"\n')
    (folder / "torchrun").write_text(TRAINER)
    (folder / "srun").write_text(TRAINER)  # the srun step: only scancel must stop it
    for path in folder.iterdir():
        path.chmod(0o755)


@pytest.mark.parametrize("command, sent, requeued", [("torchrun", signal.SIGUSR1, True),
                                                     ("torchrun", signal.SIGTERM, False),
                                                     ("srun", signal.SIGUSR1, True)])
def test_the_warning_signal_stops_the_run_and_requeues_the_job(tmp_path, command, sent, requeued):
    fake_commands(tmp_path)
    log = tmp_path / "log"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "LOG": str(log), "SLURM_JOB_ID": "4242"}
    shell = subprocess.Popen(["bash", str(HELPER), command, "--nproc_per_node=8"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not (log.exists() and "started" in log.read_text()):
        assert time.time() < deadline and shell.poll() is None
        time.sleep(0.05)
    shell.send_signal(sent)
    if command == "srun":  # what scancel --signal=TERM does to the job's steps
        deadline = time.time() + 30
        while "scancel" not in log.read_text():
            assert time.time() < deadline
            time.sleep(0.05)
        subprocess.run(["pkill", "-TERM", "-P", str(shell.pid)], check=False)
    shell.communicate(timeout=30)
    lines = log.read_text().splitlines()
    if command == "torchrun":
        assert "torchrun got TERM" in lines
    else:
        assert "scancel --signal=TERM 4242" in lines  # never SIGTERM to srun itself: it kills its tasks
        assert "srun got TERM" in lines
    assert ("scontrol requeue 4242" in lines) == requeued
    assert shell.returncode == 75  # the run's exit code


def test_the_batch_scripts_ask_for_the_warning_signal_and_a_requeue():
    for name in ("train_1node.sbatch", "train_nnodes.sbatch"):
        text = (ROOT / "scripts" / "slurm" / name).read_text()
        assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text
        assert "scripts/slurm/requeue_on_signal.sh" in text and "scripts/train_c2i.sh" in text
        done = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm" / name)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

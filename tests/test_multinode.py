"""Several nodes, played by two torchrun launchers on this machine (--nnodes 2, one gloo process each)."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from conftest import free_port
from test_sample_ddp import ROOT, digits_ckpt, flags, run_inline, the_npz  # noqa: F401 (digits_ckpt: a fixture)
from test_train_c2i import DDP_RUN, finish, launch


def node_flags(node_rank: int, port: int):
    return ["--nnodes=2", f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]


def train_on_two_nodes(codes, results, extra):
    """Node 0 and node 1 of one run; node 0's launcher hosts the rendezvous store."""
    port = free_port()
    return [launch(codes, results, extra, nproc_per_node=1, launcher=node_flags(rank, port)) for rank in (0, 1)]


def losses(output: str):
    return dict(re.findall(r"step (\d+) loss (\S+)", output))


def test_two_nodes_train_killed_and_resumed_equal_an_uninterrupted_run(tmp_path, finished_run):
    """Both launchers killed after the step-3 checkpoint, the same two commands with --resume: the
    losses of steps 4 to 6 and the step-6 weights equal an uninterrupted run's of two processes (two nodes
    of one process each are those two ranks; the one-node run is the one the other resume tests share)."""
    codes, uninterrupted, whole = finished_run(*DDP_RUN)
    flags = ["--max-steps", "6", "--log-every", "1"]

    killed = train_on_two_nodes(codes, tmp_path / "b", flags)
    checkpoints = tmp_path / "b" / "000-ARPG-tiny" / "checkpoints"
    deadline = time.time() + 240
    while not (checkpoints / "0000003.pt").exists() and time.time() < deadline and killed[0].poll() is None:
        time.sleep(0.05)
    for node in killed:
        os.killpg(node.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", str(tmp_path / "b")], check=False)  # workers, wherever they sit
    for node in killed:
        node.communicate()
    assert (checkpoints / "0000003.pt").exists()
    for later in checkpoints.glob("000000[4-9]*"):
        later.unlink()  # as if killed right after step 3
    resumed = [finish(node) for node in train_on_two_nodes(codes, tmp_path / "b", [*flags, "--resume"])][0]

    assert "resumed from" in resumed and "at step 3" in resumed
    assert losses(resumed) == {step: losses(whole)[step] for step in ("0000004", "0000005", "0000006")}
    a, b = (torch.load(run / "000-ARPG-tiny" / "checkpoints" / "0000006.pt", weights_only=True)
            for run in (uninterrupted, tmp_path / "b"))
    assert len(a["rng"]) == len(b["rng"]) == 2
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part} {key} differs after resume"


def test_two_nodes_sample_the_npz_of_one_process(digits_ckpt, tmp_path):
    run_inline(flags(digits_ckpt, tmp_path / "one"))
    port, env = free_port(), {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", *node_flags(rank, port),
                               str(ROOT / "sample_c2i_ddp.py"), *flags(digits_ckpt, tmp_path / "two")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    for node in nodes:
        output, _ = node.communicate(timeout=240)
        assert node.returncode == 0, output
    assert np.array_equal(the_npz(tmp_path / "one")[0], the_npz(tmp_path / "two")[0])


def test_the_launch_scripts_pass_the_node_settings_to_torchrun(tmp_path):
    fake = tmp_path / "torchrun"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "NNODES": "4", "NODE_RANK": "3",
           "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29555", "NPROC": "8"}
    for script in ("train_c2i.sh", "sample_c2i.sh"):
        done = subprocess.run(["bash", str(ROOT / "scripts" / script)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("--nnodes=4 --node_rank=3 --nproc_per_node=8 --master_addr=10.1.2.3 "
                                      "--master_port=29555 "), (script, done.stdout)

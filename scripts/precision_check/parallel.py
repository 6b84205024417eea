"""--parallel: every training run in a process of its own on a GPU of its own, judged together here."""
import json
import os
import subprocess
import sys
import time
from typing import List

import torch

from autoregressive.utils.cli import UserError
from autoregressive.utils.dist import free_port
from scripts.precision_check.data import learned_below
from scripts.precision_check.judge import judge_policies
from scripts.precision_check.run import planned_runs


def child_gpus(parallel: int, environ) -> List[str]:
    """The GPU of each of `parallel` child processes, as CUDA_VISIBLE_DEVICES names it: the parent's own
    visible GPUs in order where it has that variable (CUDA_VISIBLE_DEVICES=2,3 ... --parallel 2 runs on
    GPUs 2 and 3), else 0 .. parallel - 1."""
    visible = [gpu.strip() for gpu in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip()]
    return visible[:parallel] if visible else [str(slot) for slot in range(parallel)]


def run_in_parallel(args, argv: List[str]):
    """Every training run in a process of its own, args.parallel at a time, each on a GPU of its own
    (CUDA_VISIBLE_DEVICES; on the CPU they share the cores); the exact run's process also runs the
    sampling modes. Each writes its rows and curve to <out-dir>/runs/; they are judged here together.
    A run whose process fails gets a row saying so, and the others are still reported."""
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and args.parallel > torch.cuda.device_count():
        raise UserError(f"--parallel {args.parallel} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    gpus = child_gpus(args.parallel, os.environ)
    run_dir = os.path.join(args.out_dir, "runs")
    os.makedirs(run_dir, exist_ok=True)
    pending = list(enumerate(planned_runs(args)))
    running, finished = {}, {}  # slot -> (index, run, process, file); index -> (run, result or exit code)
    while pending or running:
        for slot in [slot for slot in range(args.parallel) if slot not in running][:len(pending)]:
            index, run = pending.pop(0)
            result_file = os.path.join(run_dir, f"run{index}.json")
            if os.path.exists(result_file):
                os.remove(result_file)  # never read an earlier check's result as this one's
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                   "WORLD_SIZE": "1"}
            if use_cuda:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
            command = [sys.executable, "-m", "scripts.check_precision", *argv, "--parallel", "1",
                       "--only-run", run.name, "--run-file", result_file]
            running[slot] = (index, run, subprocess.Popen(command, env=env), result_file)
        time.sleep(0.2)
        for slot, (index, run, process, result_file) in list(running.items()):
            if process.poll() is None:
                continue
            del running[slot]
            if process.returncode == 0 and os.path.exists(result_file):
                with open(result_file) as file:
                    finished[index] = (run, json.load(file))
            else:
                finished[index] = (run, process.returncode)
    training, sampling, curves = [], [], {}
    for index in sorted(finished):
        run, result = finished[index]
        if isinstance(result, int):
            training.append({"run": run.name, "seed": run.seed, "pass": f"failed: its process exited with code {result} "
                                                                  "(its output is above)"})
            continue
        training += result["training"]
        sampling += result["sampling"]
        curves.update(result["curves"])
    judge_policies(training, args.num_classes * args.samples_per_class, learned_below(args), args.exact_seeds)
    return training, sampling, curves

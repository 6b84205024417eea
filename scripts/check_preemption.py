"""Preemption check: a training run sent SIGTERM mid-way stops with a complete checkpoint, and its resume
logs the losses of an uninterrupted run. Three torchrun launches of train_c2i.py under --deterministic on
random codes: uninterrupted; SIGTERM to torchrun once step --signal-at is logged; --resume. Prints a table:
seconds from the signal to the launcher's exit, the checkpoint's step and size, and how the losses compare.

    python -m scripts.check_preemption --gpt-model ARPG-L --steps 40 --signal-at 20   (one GPU)
    python -m scripts.check_preemption --gpt-model ARPG-tiny --device cpu --batch 8    (a CPU dry run)

scripts/check_preemption_gpu.sh runs the one-GPU form. The time to exit bounds the grace period a
scheduler must give (torchrun's --shutdown-timeout, SLURM's KillWait or the --signal warning time).
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_random_codes(root: Path, num_classes: int, per_class: int, tokens: int, vocab: int) -> None:
    """RandAR's layout {class}/{index}.npy, (2 augmentations, tokens) int64, from a fixed seed."""
    rng = np.random.default_rng(0)
    for label in range(num_classes):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            np.save(root / str(label) / f"{index}.npy", rng.integers(0, vocab, (2, tokens)).astype(np.int64))


def losses(output: str) -> Dict[int, str]:
    return {int(step): loss for step, loss in re.findall(r"step (\d+) loss (\S+)", output)}


def launch(args, codes: Path, results: Path, extra: List[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               str(ROOT / "train_c2i.py"), "--gpt-model", args.gpt_model, "--code-path", str(codes),
               "--results-dir", str(results), "--global-batch-size", str(args.batch), "--epochs", "1000",
               "--warmup-epochs", "1", "--lr", "1e-4", "--max-steps", str(args.steps), "--ckpt-every", "100000",
               "--log-every", "1", "--num-workers", "0", "--deterministic", "--no-compile", "--ema",
               "--device", args.device, "--vocab-size", str(args.vocab), "--num-classes", "10", *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def run_to_end(process: subprocess.Popen) -> str:
    output, _ = process.communicate()
    if process.returncode != 0:
        sys.exit(f"a training run failed (exit code {process.returncode}):\n{output[-3000:]}")
    return output


def run_and_signal(process: subprocess.Popen, signal_at: int) -> Tuple[str, float]:
    """SIGTERM the launcher once step `signal_at` is logged; returns (output, seconds from signal to exit)."""
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    while f"step {signal_at:07d} loss" not in "".join(lines):
        if process.poll() is not None:
            reader.join()
            sys.exit(f"the run ended before step {signal_at}:\n{''.join(lines)[-3000:]}")
        time.sleep(0.01)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait()
    seconds = time.monotonic() - sent
    reader.join()
    return "".join(lines), seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpt-model", default="ARPG-L")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--signal-at", type=int, default=20, help="send SIGTERM once this step is logged")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder, removed at the end")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        codes = work / "codes"
        tokens = 16 if args.gpt_model == "ARPG-tiny" else 256
        write_random_codes(codes, 10, max(8, args.batch), tokens, args.vocab)
        image_size = ["--image-size", "64"] if tokens == 16 else []
        whole = losses(run_to_end(launch(args, codes, work / "whole", image_size)))
        stopped_output, seconds = run_and_signal(launch(args, codes, work / "stopped", image_size), args.signal_at)
        match = re.search(r"stopped at step (\d+)", stopped_output)
        if match is None:
            sys.exit(f"the signalled run wrote no stop checkpoint:\n{stopped_output[-3000:]}")
        stop_step = int(match.group(1))
        checkpoint = next((work / "stopped").glob(f"*/checkpoints/{stop_step:07d}.pt"))
        resumed = run_to_end(launch(args, codes, work / "stopped", [*image_size, "--resume"]))
        combined = {**losses(stopped_output), **losses(resumed)}
        after = [step for step in whole if step > stop_step]
        equal = [step for step in whole if combined.get(step) == whole[step]]
        print(f"| {args.gpt_model}, batch {args.batch}, {args.nproc} process(es), {args.device}, --deterministic | |")
        print("|---|---|")
        print(f"| SIGTERM to torchrun after step | {args.signal_at} |")
        print(f"| stopped at step (checkpoint) | {stop_step} ({checkpoint.stat().st_size / 2**30:.2f} GiB) |")
        print(f"| signal to launcher exit | {seconds:.1f} s |")
        print(f"| resumed steps | {after[0]}..{after[-1]} |" if after else "| resumed steps | none |")
        print(f"| logged losses equal to the uninterrupted run | {len(equal)} of {len(whole)} steps |")
        if len(equal) != len(whole) or not after:
            sys.exit("FAIL: the resumed run's losses differ from the uninterrupted run's")
        print("PASS")


if __name__ == "__main__":
    main()

"""train_c2i.py: the official flags, a 2-process gloo run, and exact resume after SIGKILL."""
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from conftest import free_port
from train_c2i import config_from_args, get_args_parser

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ("--gpt-model ARPG-L --code-path /data/codes --epochs 400 --global-batch-size 1024 --lr 4e-4 --min-lr 1e-5 "
            "--warmup-epochs 100 --lr-schedule cosine --weight-decay 5e-2 --beta1 0.9 --beta2 0.95 --max-grad-norm 1.0 "
            "--ema --dropout-p 0.1 --token-dropout-p 0.1 --no-compile --mixed-precision bf16 --results-dir results "
            "--ckpt-every 5000 --log-every 100 --num-workers 24 --global-seed 0 --vocab-size 16384 --num-classes 1000 "
            "--image-size 256 --downsample-size 16 --gradient-accumulation-steps 1")


def test_official_flags_parse_into_the_config():
    cfg = config_from_args(get_args_parser().parse_args(OFFICIAL.split()))
    assert (cfg.gpt_model, cfg.epochs, cfg.global_batch_size, cfg.lr, cfg.block_size) == ("ARPG-L", 400, 1024, 4e-4, 256)
    assert cfg.ema and not cfg.compile and cfg.betas == [0.9, 0.95]


def test_activation_memory_budget_flag():
    """--activation-memory-budget reaches the config (1.0, compile's default, unless given), is checked,
    and sets the partitioner's budget that the compiled step reads."""
    from torch._functorch import config as functorch_config

    from autoregressive.train.parallel import set_activation_memory_budget

    assert config_from_args(get_args_parser().parse_args(OFFICIAL.split())).activation_memory_budget == 1.0
    cfg = config_from_args(get_args_parser().parse_args(OFFICIAL.split() + ["--activation-memory-budget", "0.75"]))
    assert cfg.activation_memory_budget == 0.75
    with pytest.raises(ValueError, match="activation-memory-budget"):
        config_from_args(get_args_parser().parse_args(OFFICIAL.split() + ["--activation-memory-budget", "1.5"]))
    with functorch_config.patch(activation_memory_budget=1.0):
        set_activation_memory_budget(cfg.activation_memory_budget)
        assert functorch_config.activation_memory_budget == 0.75


def test_deterministic_flag_turns_on_deterministic_kernels(monkeypatch):
    """--deterministic reaches the config and, before any CUDA work, switches torch, cuDNN, cuBLAS and
    inductor to their deterministic kernels (restored here: the switch is process-wide)."""
    from torch._inductor import config as inductor_config

    from autoregressive.utils.device import use_deterministic_kernels

    assert not config_from_args(get_args_parser().parse_args(OFFICIAL.split())).deterministic
    assert config_from_args(get_args_parser().parse_args(OFFICIAL.split() + ["--deterministic"])).deterministic
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cuda.cudnn_sdp_enabled())
    try:
        with inductor_config.patch(deterministic=False) if hasattr(inductor_config, "deterministic") else nullcontext():
            use_deterministic_kernels()
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.is_deterministic_algorithms_warn_only_enabled()  # efficient attention's exact backward
            assert not torch.backends.cuda.cudnn_sdp_enabled()  # cuDNN attention's backward is not deterministic
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
            assert getattr(inductor_config, "deterministic", True)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
        torch.backends.cuda.enable_cudnn_sdp(before[4])


def test_digits_flags_that_contradict_the_dataset_are_refused():
    args = get_args_parser().parse_args("--dataset digits --code-path x --vocab-size 100".split())
    with pytest.raises(ValueError, match="vocab-size 17"):
        config_from_args(args)


def write_codes(root: Path, num_per_class=12, num_classes=3, tokens=16):
    rng = np.random.default_rng(0)
    for label in range(num_classes):
        (root / str(label)).mkdir(parents=True)
        for index in range(num_per_class):
            np.save(root / str(label) / f"{index}.npy", rng.integers(0, 32, (2, tokens)).astype(np.int64))


def train_flags(codes: Path, results: Path, extra=()):
    """train_c2i.py's flags for a tiny run (36 samples, 4 steps per epoch, a checkpoint every 3 steps)."""
    return [str(ROOT / "train_c2i.py"), "--gpt-model", "ARPG-tiny", "--code-path", str(codes),
            "--results-dir", str(results), "--vocab-size", "32", "--num-classes", "3", "--image-size", "64",
            "--global-batch-size", "8", "--gradient-accumulation-steps", "2", "--epochs", "4",
            "--warmup-epochs", "1", "--lr", "1e-3", "--ckpt-every", "3", "--log-every", "3", "--num-workers", "0",
            "--num-threads", "1", "--device", "cpu", "--ema", *extra]


def launch(codes: Path, results: Path, extra=(), nproc_per_node=2, launcher=()):
    """torchrun the tiny run on gloo; `launcher` adds torchrun flags (several nodes: --nnodes, --node-rank)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}",
               *(launcher or [f"--master_port={free_port()}"]), *train_flags(codes, results, extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def final_state(results: Path, tmp_path: Path, step: Optional[int] = None):
    """The last checkpoint of the run (or that of `step`); a sharded one is converted to a file first (and
    keeps its RNG states)."""
    from autoregressive.train.checkpoint import convert_sharded_checkpoint, latest_checkpoint, load_checkpoint

    path = latest_checkpoint(str(results / "000-ARPG-tiny"))
    if step is not None:
        [path] = [str(path) for path in (results / "000-ARPG-tiny" / "checkpoints").glob(f"{step:07d}*")]
    if path.endswith(".pt"):
        return load_checkpoint(path)
    converted = convert_sharded_checkpoint(path, str(tmp_path / f"{results.name}.pt"))
    assert load_checkpoint(str(tmp_path / f"{results.name}.pt")).progress == converted.progress
    converted.rng = load_checkpoint(path).rng
    return converted


# The uninterrupted 2-process runs (finished_run) that several tests compare with or resume from a copy of.
# ddp: every loss logged, a checkpoint every 3 steps (train_flags' --ckpt-every). fsdp: with --deterministic,
# as the GPU resume check (scripts/check_multigpu.sh) runs it.
DDP_RUN = ("--max-steps", "12", "--log-every", "1")
FSDP_RUN = ("--max-steps", "9", "--data-parallel", "fsdp", "--deterministic")


def copy_run(results: Path, copy: Path, last_step: int) -> None:
    """A copy of a finished run's results folder without its checkpoints after last_step: the run as if it
    had stopped there (the learning rate follows --epochs, so nothing else tells the two apart)."""
    shutil.copytree(results, copy)
    for checkpoint in (copy / "000-ARPG-tiny" / "checkpoints").iterdir():
        if int(checkpoint.name[:7]) > last_step:
            shutil.rmtree(checkpoint) if checkpoint.is_dir() else checkpoint.unlink()


def run_killed_and_resumed(codes: Path, results: Path, extra) -> str:
    """SIGKILL the run right after its step-3 checkpoint (any later one is removed), then --resume."""
    killed = launch(codes, results, ["--max-steps", "9", *extra])
    checkpoints = results / "000-ARPG-tiny" / "checkpoints"
    first = checkpoints / ("0000003" if "fsdp" in extra else "0000003.pt")
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    # torchrun's workers may sit in process groups of their own: kill whatever trains into this folder
    subprocess.run(["pkill", "-9", "-f", str(results)], check=False)
    killed.communicate()
    assert first.exists()
    for later in checkpoints.iterdir():
        if later != first:
            shutil.rmtree(later) if later.is_dir() else later.unlink()  # as if killed right after the first
    (checkpoints / "0000006.tmp4242.pt").write_bytes(b"a checkpoint write that SIGKILL cut short")
    output = finish(launch(codes, results, ["--max-steps", "9", "--resume", *extra]))
    assert not (checkpoints / "0000006.tmp4242.pt").exists()
    return output


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_run_killed_and_resumed_equals_uninterrupted(tmp_path, mode, finished_run):
    """9 steps of 2 gloo processes: uninterrupted vs SIGKILL after the step-3 checkpoint and --resume.
    fsdp: sharded checkpoints, converted to one file at the end."""
    run = DDP_RUN if mode == "ddp" else FSDP_RUN
    extra = list(run[2:]) if mode == "fsdp" else ["--data-parallel", mode]  # fsdp: the run's flags but --max-steps
    # 36 samples, 8 per step: 4 steps per epoch, so the kill lands mid-epoch
    codes, uninterrupted, _ = finished_run(*run)
    output = run_killed_and_resumed(codes, tmp_path / "b", extra)
    assert "resumed from" in output and "step 3" in output

    a, b = final_state(uninterrupted, tmp_path, step=9), final_state(tmp_path / "b", tmp_path)
    assert a.progress.step == 9 and a.progress == b.progress
    for part in ("model", "ema"):
        for key in getattr(a, part):
            assert torch.equal(getattr(a, part)[key], getattr(b, part)[key]), f"{part} {key} differs after resume"
    if mode == "ddp":
        for key, state in a.optimizer["state"].items():
            assert torch.equal(state["exp_avg"], b.optimizer["state"][key]["exp_avg"])
    assert len(a.rng) == 2


def test_fsdp_trains_what_ddp_trains_and_converts_to_a_strictly_loading_file(tmp_path, finished_run):
    from autoregressive.models.arpg import ARPG_models
    from autoregressive.weights import load_model_weights

    # The step-6 checkpoints: the ddp run's is that of a longer run, shared with the resume tests (the
    # learning rate follows --epochs, not --max-steps, so its first 6 steps are a 6-step run's).
    ddp_run, fsdp_run = finished_run(*DDP_RUN)[1], finished_run(*FSDP_RUN)[1]
    sharded = fsdp_run / "000-ARPG-tiny" / "checkpoints" / "0000006"
    converted = tmp_path / "converted.pt"
    result = subprocess.run([sys.executable, "-m", "scripts.convert_checkpoint", str(sharded), str(converted)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ddp = torch.load(ddp_run / "000-ARPG-tiny" / "checkpoints" / "0000006.pt", weights_only=True)
    fsdp = torch.load(converted, weights_only=True)
    assert fsdp["model"].keys() == ddp["model"].keys() and "layers.self_dec.0.attn.to_q.weight" in fsdp["model"]
    for part in ("model", "ema"):
        for key in ddp[part]:  # the same run; only the gradient reduction differs
            assert torch.allclose(fsdp[part][key], ddp[part][key], atol=1e-5), (part, key)
    model = ARPG_models["ARPG-tiny"](vocab_size=32, num_classes=3, block_size=16)
    load_model_weights(model, str(converted), weights="ema")  # strict
    assert torch.equal(model.state_dict()["head.weight"], fsdp["ema"]["head.weight"])


def test_a_checkpoint_resumes_only_with_the_data_parallel_mode_that_wrote_it(tmp_path, finished_run):
    codes, results, _ = finished_run(*FSDP_RUN)
    copy_run(results, tmp_path / "a", last_step=3)
    output, _ = launch(codes, tmp_path / "a", ["--max-steps", "6", "--resume"]).communicate(timeout=240)
    assert "resume it with --data-parallel fsdp" in output


def test_bare_resume_without_checkpoints_starts_a_new_run(tmp_path):
    from autoregressive.train.loop import find_resume_checkpoint

    args = get_args_parser().parse_args(["--code-path", "x", "--results-dir", str(tmp_path), "--resume"])
    cfg = config_from_args(args)
    assert cfg.resume == "latest" and find_resume_checkpoint(cfg) is None
    run = tmp_path / "003-ARPG-L" / "checkpoints"
    run.mkdir(parents=True)
    for step in (5, 40, 12):
        torch.save({"step": step}, run / f"{step:07d}.pt")
    assert find_resume_checkpoint(cfg).endswith("0000040.pt")
    explicit = config_from_args(get_args_parser().parse_args(["--code-path", "x", "--gpt-ckpt", str(run / "0000012.pt")]))
    assert find_resume_checkpoint(explicit).endswith("0000012.pt")


def test_a_step_out_of_gpu_memory_says_what_to_do_and_keeps_the_checkpoints(tmp_path, monkeypatch, capsys):
    """The official 1024 on 4 GPUs is 256 per GPU, which does not fit ARPG-L on 80 GB: the run ends with
    one line naming the micro-batch and the flags that fit the same global batch, not a traceback, and the
    checkpoint written before stays."""
    import train_c2i
    from autoregressive.train.loop import Trainer
    from autoregressive.utils.cli import run_main

    codes, results = tmp_path / "codes", tmp_path / "results"
    write_codes(codes)
    real_step, steps = Trainer.optimizer_step, []

    def step_then_out_of_memory(self, batches):
        steps.append(len(steps))
        if len(steps) > 3:  # after the step-3 checkpoint
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_c2i.cli, train_flags(codes, results)[1:])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]  # the progress bar has lines too
    assert "Traceback" not in stderr and len(errors) == 1
    assert errors[0].startswith("error: out of GPU memory at 4 images per GPU") and stderr.rstrip().endswith(errors[0])
    assert "--gradient-accumulation-steps 4" in errors[0] and "--global-batch-size 8" in errors[0]
    assert (results / "000-ARPG-tiny" / "checkpoints" / "0000003.pt").exists()

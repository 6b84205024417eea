"""scripts/bench_train.py times the trainer's own optimizer step (here on the CPU, uncompiled)."""
import argparse

import torch

from autoregressive.train.loop import Trainer
from autoregressive.utils.dist import init_distributed
from scripts import bench_train


def test_bench_times_the_trainer_step(monkeypatch):
    calls, real_step = [], Trainer.optimizer_step

    def counted(trainer, batches):
        calls.append([codes.shape for codes, _ in batches])
        return real_step(trainer, batches)

    monkeypatch.setattr(Trainer, "optimizer_step", counted)
    args = argparse.Namespace(steps=2, reps=2, no_compile=True, chunked_loss=True, grad_checkpointing="none",
                              check_loss=True)
    result = bench_train.bench_one("ARPG-tiny", 2, "ddp", args, init_distributed("cpu"))
    assert calls == [[torch.Size([2, 256])]] * (3 + 2 * 2)  # warm-up, then steps x reps, one micro-batch each
    assert result["img_s"] > 0 and result["peak_gib"] is None
    # uncompiled on the CPU, the "compiled" loss is the eager one; a zero head would make all of them log V
    assert result["loss_compiled"] == result["loss_fp32"] != torch.log(torch.tensor(16384.0)).item()

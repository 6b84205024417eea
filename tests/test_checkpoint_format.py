"""The training checkpoint layout: pack/unpack with a format version, old files, and resume in one process."""
import dataclasses
from pathlib import Path

import pytest
import torch

from autoregressive.train.checkpoint import (FORMAT_VERSION, Progress, TrainingCheckpoint, load_checkpoint, pack,
                                             save_atomic, unpack)
from autoregressive.train.config import TrainConfig
from autoregressive.train.loop import Trainer
from autoregressive.utils.dist import DistInfo

ROOT = Path(__file__).resolve().parents[1]
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    return TrainConfig(code_path="", gpt_model="ARPG-tiny", results_dir=str(tmp_path), vocab_size=32, num_classes=3,
                       image_size=64, global_batch_size=4, epochs=2, warmup_epochs=0, lr=1e-3, compile=False,
                       mixed_precision="none", num_workers=0, ema=True, **overrides)


def tiny_dataset(num=12):
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 32, (num, 16), generator=generator)
    return torch.utils.data.TensorDataset(codes, torch.arange(num) % 3)


def trained(cfg, steps=2) -> Trainer:
    trainer = Trainer(cfg, CPU, tiny_dataset())
    batches = iter(trainer.loader)
    for _ in range(steps):
        trainer.optimizer_step([next(batches)])
        trainer.progress = Progress(trainer.progress.step + 1, 0, trainer.progress.batch_in_epoch + 1)
    return trainer


def test_pack_writes_the_version_and_unpack_inverts_it():
    checkpoint = TrainingCheckpoint(Progress(9, 2, 1), {"gpt_model": "ARPG-tiny"}, rng=[{"cpu": torch.get_rng_state()}],
                                    model={"w": torch.ones(2)}, optimizer={"state": {}}, ema={"w": torch.zeros(2)})
    payload = pack(checkpoint)
    assert payload["format_version"] == FORMAT_VERSION and payload["model_name"] == "ARPG-tiny"
    unpacked = unpack(payload)
    assert unpacked.progress == checkpoint.progress and unpacked.config == checkpoint.config
    assert all(getattr(unpacked, entry) is getattr(checkpoint, entry) for entry in ("rng", "model", "optimizer", "ema"))
    without_weights = pack(TrainingCheckpoint(Progress(), {"gpt_model": "ARPG-tiny"}))
    assert not {"model", "optimizer", "ema", "rng"} & set(without_weights)


def test_a_newer_or_bad_format_version_is_refused():
    payload = pack(TrainingCheckpoint(Progress(), {"gpt_model": "ARPG-tiny"}))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}; this code reads versions 1 to "
                                         f"{FORMAT_VERSION}. Update the code"):
        unpack({**payload, "format_version": FORMAT_VERSION + 1}, "x.pt")
    with pytest.raises(ValueError, match="format version '2'"):
        unpack({**payload, "format_version": "2"})
    with pytest.raises(ValueError, match="no epoch, batch_in_epoch"):
        unpack({"model": {}, "step": 3, "config": {}}, "released.pt")


def test_trainer_resumes_its_own_checkpoint_exactly(tmp_path):
    cfg = tiny_config(tmp_path)
    first = trained(cfg)
    path = first.save(str(tmp_path))
    assert torch.load(path, weights_only=True)["format_version"] == FORMAT_VERSION
    second = Trainer(cfg, CPU, tiny_dataset())
    second.restore(path)
    assert second.progress == first.progress == Progress(2, 0, 2)
    for a, b in ((first.model, second.model), (first.ema, second.ema)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    batch = next(iter(first.loader))
    torch.manual_seed(5)
    loss_first = first.optimizer_step([batch])
    torch.manual_seed(5)
    assert torch.equal(loss_first, second.optimizer_step([batch]))  # optimizer state came back too
    assert torch.equal(first.model.head.weight, second.model.head.weight)


def test_a_version_1_checkpoint_still_resumes(tmp_path):
    """The layout written before the format version existed (keys exactly as that code wrote them)."""
    cfg = tiny_config(tmp_path)
    first = trained(cfg)
    old = {"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(), "step": 2, "epoch": 0,
           "batch_in_epoch": 2, "config": dataclasses.asdict(cfg), "model_name": cfg.gpt_model,
           "rng": [{"cpu": torch.get_rng_state()}], "ema": first.ema.state_dict()}
    path = tmp_path / "checkpoints" / "0000002.pt"
    save_atomic(old, str(path))
    second = Trainer(cfg, CPU, tiny_dataset())
    second.restore(str(path))
    assert second.progress == Progress(2, 0, 2)
    assert torch.equal(second.ema.head.weight, first.ema.head.weight)


def test_a_weights_only_file_is_refused_for_resume(tmp_path):
    cfg = tiny_config(tmp_path)
    first = trained(cfg, steps=1)
    path = tmp_path / "converted.pt"
    save_atomic(pack(TrainingCheckpoint(first.progress, dataclasses.asdict(cfg), model=first.model.state_dict())),
                str(path))
    with pytest.raises(ValueError, match="holds no optimizer or RNG state"):
        Trainer(cfg, CPU, tiny_dataset()).restore(str(path))
    with pytest.raises(ValueError, match="format version 7"):
        save_atomic({**pack(first.checkpoint(with_weights=True)), "format_version": 7}, str(path))
        load_checkpoint(str(path))


def test_the_payload_keys_are_spelled_in_checkpoint_py_only():
    sources = [path for path in ROOT.rglob("*.py") if "tests" not in path.parts and ".git" not in path.parts]
    holders = sorted(str(path.relative_to(ROOT)) for path in sources if '"batch_in_epoch"' in path.read_text())
    assert holders == ["autoregressive/train/checkpoint.py"]

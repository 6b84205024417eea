import math

import pytest
import torch

from autoregressive.train.checkpoint import (Progress, TrainingCheckpoint, latest_checkpoint, load_checkpoint, pack,
                                             save_atomic)
from autoregressive.train.ema import create_ema, update_ema
from autoregressive.train.optim import build_optimizer, learning_rate_at
from autoregressive.weights import load_model_weights
from conftest import build_tiny


def test_learning_rate_schedule_values():
    at = lambda epoch, schedule="cosine": learning_rate_at(epoch, 4e-4, 1e-5, 100, 400, schedule)
    assert at(0) == 0 and at(50) == pytest.approx(2e-4) and at(100) == pytest.approx(4e-4)
    assert at(250) == pytest.approx(1e-5 + (4e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert at(400) == pytest.approx(1e-5) and at(300, "constant") == 4e-4
    with pytest.raises(ValueError, match="lr-schedule"):
        at(200, "step")


def test_weight_decay_only_on_matrices():
    model = build_tiny()
    optimizer = build_optimizer(model, 1e-3, 0.05, (0.9, 0.95), fused=False)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"]) and plain["params"]


def test_checkpoint_round_trip_is_plain_data_and_loads_as_weights(tmp_path):
    model = build_tiny(seed=1)
    config = {"gpt_model": "ARPG-tiny", "lr": 1e-4, "betas": [0.9, 0.95]}
    path = tmp_path / "run" / "checkpoints" / "0000007.pt"
    save_atomic(pack(TrainingCheckpoint(Progress(7, 1, 3), config, model=model.state_dict())), str(path))
    assert latest_checkpoint(str(tmp_path / "run")) == str(path)
    loaded = load_checkpoint(str(path))  # weights_only=True inside
    assert loaded.progress == Progress(7, 1, 3) and loaded.config["betas"] == [0.9, 0.95]
    fresh = load_model_weights(build_tiny(seed=2), str(path))
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 1}, str(path))

    def broken_save(obj, file):
        open(file, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_atomic({"step": 2}, str(path))
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_ema_starts_equal_and_moves_toward_the_model():
    model = build_tiny()
    ema = create_ema(model)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), model.parameters()))
    with torch.no_grad():
        model.head.weight.add_(1.0)
    before = ema.head.weight.clone()
    update_ema(ema, model, decay=0.9)
    assert torch.allclose(ema.head.weight, before + 0.1)


def test_latest_checkpoint_takes_files_and_complete_sharded_folders(tmp_path):
    from autoregressive.train.checkpoint import TRAINER_FILE, latest_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({}, folder / "0000010.pt")
    (folder / "0000020").mkdir()
    (folder / "0000020" / TRAINER_FILE).write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)).endswith("0000020")
    (folder / "0000030.tmp").mkdir()  # a save that was killed half-way
    (folder / "0000040").mkdir()  # no trainer.pt: incomplete
    (folder / "0000050.tmp123.pt").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)).endswith("0000020")


def test_trainer_steps_cross_epochs_with_the_schedule_and_continue_where_they_stopped():
    from autoregressive.train.config import TrainConfig
    from autoregressive.train.loop import Trainer
    from autoregressive.utils.dist import init_distributed

    codes, labels = torch.randint(0, 32, (12, 16)), torch.arange(12) % 5
    dataset = torch.utils.data.TensorDataset(codes, labels)
    cfg = TrainConfig(code_path="", gpt_model="ARPG-tiny", vocab_size=32, num_classes=5, image_size=4,
                      downsample_size=1, global_batch_size=4, gradient_accumulation_steps=2, epochs=2,
                      warmup_epochs=1, lr=1e-3, min_lr=0.0, num_workers=0, device="cpu")
    info = init_distributed("cpu")
    whole = Trainer(cfg, info, dataset)  # 3 steps an epoch, 2 micro-batches of 2 each
    straight = [(loss.item(), lr) for loss, lr in whole.steps(5)]
    assert [lr for _, lr in straight] == [learning_rate_at(step / 3, 1e-3, 0.0, 1, 2, "cosine") for step in range(5)]
    assert (whole.progress.step, whole.progress.epoch, whole.progress.batch_in_epoch) == (5, 1, 2)
    parts = Trainer(cfg, info, dataset)
    stopped = [(loss.item(), lr) for loss, lr in parts.steps(2)] + [(loss.item(), lr) for loss, lr in parts.steps(5)]
    assert stopped == straight


def test_a_saved_config_of_an_earlier_version_drops_retired_fields_only():
    import dataclasses

    from autoregressive.train.config import TrainConfig, saved_train_config

    saved = dataclasses.asdict(TrainConfig(code_path="codes", gpt_model="ARPG-tiny", lr=1e-4))
    assert saved_train_config({**saved, "kernels": "liger-ce"}) == TrainConfig(**saved)  # a retired field
    with pytest.raises(TypeError, match="no_such_flag"):  # anything else is not silently dropped
        saved_train_config({**saved, "no_such_flag": 1})

"""Controllable sampling from the scripts: sample_c2i_ddp.py with a condition folder or a map, edit_c2i.py
with a map."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoregressive.fast_generate import make_sampler
from autoregressive.models.arpg import ARPG_models
from autoregressive.render import tokens_to_images
from autoregressive.sampling import SamplingConfig, batch_generator
from conftest import free_port
from dataset.conditions import ConditionFolder, ConditionInfo, write_condition_info
from sample_c2i_ddp import get_args_parser, main

ROOT = Path(__file__).resolve().parents[1]
FOLDER_CLASSES = (3, 3, 7, 7, 7)  # the classes of the condition folder's files, in sorted order
BATCH = 2  # per process: the last batch of 5 samples is padded


@pytest.fixture(scope="module")
def controlled_ckpt(tmp_path_factory):
    """A random digits model with a 2-id condition table whose rows differ a lot."""
    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"](condition_vocab_size=2)
    for weight in (model.head.weight, model.condition_embeddings.weight):
        torch.nn.init.normal_(weight, std=1.0)
    path = tmp_path_factory.mktemp("model") / "controlled.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def load_controlled(path) -> torch.nn.Module:
    model = ARPG_models["ARPG-digits"](condition_vocab_size=2)
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return model.eval()


@pytest.fixture(scope="module")
def condition_folder(tmp_path_factory):
    """{class}/{index}.npy of (2, 64) shapes (the second row, a flip, is never sampled) and condition.json."""
    root = tmp_path_factory.mktemp("conditions") / "val_shape"
    rng = np.random.default_rng(0)
    for index, label in enumerate(FOLDER_CLASSES):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        np.save(root / str(label) / f"{index}.npy", rng.integers(0, 2, (2, 64)).astype(np.int64))
    write_condition_info(str(root), ConditionInfo("digit-shape", 2, 8))
    return root


def flags(ckpt, out, *extra):
    return ["--gpt-model", "ARPG-digits", "--gpt-ckpt", str(ckpt), "--sample-dir", str(out), "--per-proc-batch-size",
            str(BATCH), "--step", "4", "--cfg-scale", "2.0", "--precision", "none", "--device", "cpu", *extra]


def the_npz(out: Path):
    [path] = out.glob("*.npz")
    with np.load(path) as data:
        return data["arr_0"], data["labels"]


def expected_images(model, labels: torch.Tensor, maps: torch.Tensor) -> np.ndarray:
    """What the DDP recipe gives: batches of BATCH from (seed 0, first index), the last one padded with
    sample i mod num_samples."""
    num, sampling, images = len(labels), SamplingConfig(num_steps=4, cfg_scale=2.0), []
    for first in range(0, num, BATCH):
        index = torch.arange(first, first + BATCH) % num
        tokens = make_sampler(model)(labels[index], sampling, batch_generator("cpu", 0, first), condition_map=maps[index])
        images.append(tokens_to_images(tokens, 8, None, 17, 8).numpy())
    return np.concatenate(images)[:num]


def test_a_condition_folder_gives_sample_i_the_ith_map_and_its_class(controlled_ckpt, condition_folder, tmp_path):
    main(get_args_parser().parse_args(flags(controlled_ckpt, tmp_path / "c", "--condition-path", str(condition_folder))))
    arr, labels = the_npz(tmp_path / "c")
    assert labels.tolist() == list(FOLDER_CLASSES)  # --num-fid-samples defaults to the folder's size
    folder = ConditionFolder(str(condition_folder))
    maps = folder.read_maps(range(len(folder)))
    assert torch.equal(maps[4], torch.from_numpy(np.load(condition_folder / "7" / "4.npy")[0]))
    model = load_controlled(controlled_ckpt)
    assert np.array_equal(arr, expected_images(model, torch.tensor(FOLDER_CLASSES), maps))
    no_condition = torch.full_like(maps, model.config.null_condition_id)
    assert not np.array_equal(arr, expected_images(model, torch.tensor(FOLDER_CLASSES), no_condition))

    [samples] = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert samples.name.endswith("-condition-val_shape")  # never mixed up with an unconditioned run
    (samples / "000004.png").unlink()  # as if killed before the last batch
    (samples.parent / f"{samples.name}.npz").unlink()
    main(get_args_parser().parse_args(flags(controlled_ckpt, tmp_path / "c", "--condition-path", str(condition_folder))))
    assert np.array_equal(the_npz(tmp_path / "c")[0], arr)


def test_fewer_samples_than_maps_take_the_first_ones(controlled_ckpt, condition_folder, tmp_path):
    main(get_args_parser().parse_args(flags(controlled_ckpt, tmp_path / "all", "--condition-path", str(condition_folder))))
    main(get_args_parser().parse_args(flags(controlled_ckpt, tmp_path / "three", "--condition-path",
                                            str(condition_folder), "--num-fid-samples", "3")))
    arr, labels = the_npz(tmp_path / "three")
    assert labels.tolist() == list(FOLDER_CLASSES[:3])
    assert np.array_equal(arr[:2], the_npz(tmp_path / "all")[0][:2])  # the first batch is the same batch


def test_two_gloo_processes_give_the_conditioned_images_of_one(controlled_ckpt, condition_folder, tmp_path):
    argv = ["--condition-path", str(condition_folder), "--condition-vocab-size", "2"]
    main(get_args_parser().parse_args(flags(controlled_ckpt, tmp_path / "one", *argv)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(ROOT / "sample_c2i_ddp.py"), *flags(controlled_ckpt, tmp_path / "two", *argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = the_npz(tmp_path / "one"), the_npz(tmp_path / "two")
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_a_condition_map_reaches_the_ddp_sampler(controlled_ckpt, tmp_path):
    """One map for every sample, and one per sample: the images are those of the map; another map
    gives other images."""
    rng = np.random.default_rng(1)
    each = rng.integers(0, 2, (3, 64)).astype(np.int64)
    np.save(tmp_path / "each.npy", each)
    np.save(tmp_path / "one.npy", each[0].reshape(8, 8))
    model, labels = load_controlled(controlled_ckpt), torch.arange(3)
    for name, maps in (("each", torch.from_numpy(each)), ("one", torch.from_numpy(each[:1]).expand(3, -1))):
        main(get_args_parser().parse_args(flags(controlled_ckpt, tmp_path / name, "--num-fid-samples", "3",
                                                "--condition-vocab-size", "2", "--condition-map",
                                                str(tmp_path / f"{name}.npy"))))
        assert np.array_equal(the_npz(tmp_path / name)[0], expected_images(model, labels, maps))
        assert the_npz(tmp_path / name)[1].tolist() == [0, 1, 2]
    assert not np.array_equal(the_npz(tmp_path / "each")[0][1:], the_npz(tmp_path / "one")[0][1:])


def edit(ckpt, out: Path, monkeypatch, *extra):
    """Run edit_c2i.py (inpaint the lower half of held-out digit 3) and return the tokens it sampled and
    the keywords its sampler got."""
    import edit_c2i

    calls, real = [], edit_c2i.make_sampler

    def recording(model):
        sampler = real(model)

        def sample(*args, **kwargs):
            tokens = sampler(*args, **kwargs)
            calls.append((tokens, kwargs))
            return tokens
        return sample

    monkeypatch.setattr(edit_c2i, "make_sampler", recording)
    edit_c2i.main(edit_c2i.get_args_parser().parse_args(
        ["--task", "inpaint", "--gpt-model", "ARPG-digits", "--gpt-ckpt", str(ckpt), "--digit-index", "3", "--shape",
         "bottom", "--num-samples", "3", "--step", "4", "--condition-vocab-size", "2", "--device", "cpu",
         "--out", str(out), *extra]))
    [(tokens, kwargs)] = calls
    return tokens, kwargs


def test_edit_regenerates_the_masked_area_under_the_condition_map(controlled_ckpt, tmp_path, monkeypatch):
    from dataset.digits import load_digits_split

    shape = np.zeros((8, 8), dtype=np.int64)
    shape[:, 2:6] = 1
    np.save(tmp_path / "shape.npy", shape)
    np.save(tmp_path / "other.npy", 1 - shape)
    tokens, kwargs = edit(controlled_ckpt, tmp_path / "a.png", monkeypatch, "--condition-map", str(tmp_path / "shape.npy"))
    assert torch.equal(kwargs["condition_map"], torch.from_numpy(shape.reshape(1, -1)).expand(3, -1))
    digit = torch.from_numpy(load_digits_split("val")[0][3])
    assert torch.equal(tokens[:, :32], digit[:32].expand(3, -1))  # the upper half is kept
    assert (tmp_path / "a.png").exists()
    other, _ = edit(controlled_ckpt, tmp_path / "b.png", monkeypatch, "--condition-map", str(tmp_path / "other.npy"))
    unconditioned, kwargs = edit(controlled_ckpt, tmp_path / "c.png", monkeypatch)
    assert "condition_map" not in kwargs
    assert not torch.equal(tokens[:, 32:], other[:, 32:]) and not torch.equal(tokens[:, 32:], unconditioned[:, 32:])
    assert torch.equal(other[:, :32], tokens[:, :32])

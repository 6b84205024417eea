"""Condition maps beside the codes: the digits builder, the conditioned dataset, training with them."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoregressive.train.checkpoint import latest_checkpoint, load_checkpoint
from dataset.build import build_dataset
from dataset.codes import augmentation_index
from dataset.conditions import ConditionInfo, write_condition_info
from dataset.digits import SHAPE_INFO, digit_shapes, load_digits_split, write_digits
from train_c2i import config_from_args, get_args_parser


def write_pair(root: Path, num_per_class=8, num_classes=3, augmentations=2, tokens=16, vocab=4):
    """Codes {class}/{i}.npy (A, N) and, beside them, condition maps whose row a equals the code row a
    modulo `vocab`, so a test can tell which augmentation a map row belongs to."""
    rng = np.random.default_rng(0)
    codes, conditions = root / "codes", root / "codes_edges"
    for label in range(num_classes):
        for folder in (codes, conditions):
            (folder / str(label)).mkdir(parents=True)
        for index in range(num_per_class):
            array = rng.integers(0, 32, (augmentations, tokens)).astype(np.int64)
            np.save(codes / str(label) / f"{index}.npy", array)
            np.save(conditions / str(label) / f"{index}.npy", array % vocab)
    write_condition_info(str(conditions), ConditionInfo("test", vocab, int(tokens ** 0.5)))
    return codes, conditions


def test_digits_builder_writes_the_binarised_shapes_beside_the_digits(tmp_path):
    write_digits(str(tmp_path))
    images, labels = load_digits_split("val")
    shape = np.load(tmp_path / "val_shape" / str(labels[3]) / "3.npy")
    assert shape.shape == (1, 64) and np.array_equal(shape[0], (images[3] >= 8).astype(np.int64))
    assert json.loads((tmp_path / "train_shape" / "condition.json").read_text())["vocab_size"] == SHAPE_INFO.vocab_size
    assert set(np.unique(digit_shapes(images))) == {0, 1}
    data = build_dataset("digits", str(tmp_path / "train"), condition_path=str(tmp_path / "train_shape"))
    codes, _, condition_map = data[10]
    assert torch.equal(condition_map, torch.from_numpy(digit_shapes(codes.numpy())))


def test_conditioned_codes_read_the_same_augmentation_as_the_codes(tmp_path):
    codes, conditions = write_pair(tmp_path)
    data = build_dataset("imagenet_code", str(codes), seed=5, condition_path=str(conditions))
    for epoch in (0, 1):
        data.set_epoch(epoch)
        rows = {augmentation_index(5, epoch, index, 2) for index in range(len(data))}
        assert rows == {0, 1}  # both augmentations occur
        for index in range(len(data)):
            tokens, label, condition_map = data[index]
            assert torch.equal(condition_map, tokens % 4) and condition_map.dtype == torch.long


def test_missing_or_mismatched_condition_files_are_explained(tmp_path):
    codes, conditions = write_pair(tmp_path)
    (conditions / "1" / "2.npy").unlink()
    np.save(conditions / "0" / "0.npy", np.zeros((1, 16), dtype=np.int64))
    data = build_dataset("imagenet_code", str(codes), condition_path=str(conditions))
    with pytest.raises(FileNotFoundError, match="1/2.npy"):
        data[10]
    with pytest.raises(ValueError, match=r"need \(2, 16\)"):
        data[0]
    with pytest.raises(FileNotFoundError, match="condition.json"):
        build_dataset("imagenet_code", str(codes), condition_path=str(tmp_path))
    write_condition_info(str(conditions), ConditionInfo("test", 4, 8))
    with pytest.raises(ValueError, match="8x8"):
        build_dataset("imagenet_code", str(codes), condition_path=str(conditions))


def train(capsys, codes: Path, results: Path, *extra):
    """train_c2i.py in this process (the command line's own path is run by the torchrun tests); returns the
    last checkpoint and what the run printed."""
    import train_c2i
    from autoregressive.utils.cli import run_main

    run_main(train_c2i.cli, ["--gpt-model", "ARPG-tiny", "--code-path", str(codes), "--results-dir", str(results),
                             "--vocab-size", "32", "--num-classes", "3", "--image-size", "64", "--global-batch-size", "8",
                             "--epochs", "2", "--warmup-epochs", "1", "--lr", "1e-2", "--max-steps", "3",
                             "--ckpt-every", "3", "--num-workers", "0", "--num-threads", "1", "--device", "cpu", *extra])
    return load_checkpoint(latest_checkpoint(str(results / "000-ARPG-tiny"))), capsys.readouterr().out


def test_condition_flags_reach_the_config(tmp_path):
    _, conditions = write_pair(tmp_path)
    args = get_args_parser().parse_args(["--code-path", "x", "--condition-path", str(conditions),
                                         "--condition-dropout-p", "0.2", "--init-from", "w.pt"])
    cfg = config_from_args(args)
    assert (cfg.condition_vocab_size, cfg.condition_dropout_prob, cfg.init_from) == (4, 0.2, "w.pt")
    assert config_from_args(get_args_parser().parse_args(["--code-path", "x"])).condition_vocab_size == 0


def test_fine_tuning_a_class_only_run_with_conditions(tmp_path, capsys):
    """A class-only run, then a controllable run initialised from it: the condition table is trained
    from copies of the [MASK] row, and the checkpoint loads strictly into a controllable model."""
    from autoregressive.models.arpg import ARPG_models
    from autoregressive.weights import load_model_weights

    codes, conditions = write_pair(tmp_path)
    class_only, _ = train(capsys, codes, tmp_path / "class_only")
    assert not any(key.startswith("condition") for key in class_only.model)
    start = tmp_path / "class_only" / "000-ARPG-tiny" / "checkpoints" / "0000003.pt"
    controlled, output = train(capsys, codes, tmp_path / "controlled", "--condition-path", str(conditions),
                               "--init-from", str(start))
    assert "fresh condition parameters" in output
    table, mask_row = controlled.model["condition_embeddings.weight"], class_only.model["embeddings.weight"][32]
    assert table.shape == (5, 64) and not torch.allclose(table, mask_row.expand(5, -1))
    assert controlled.config["condition_vocab_size"] == 4
    model = ARPG_models["ARPG-tiny"](vocab_size=32, num_classes=3, block_size=16, condition_vocab_size=4)
    load_model_weights(model, str(latest_checkpoint(str(tmp_path / "controlled" / "000-ARPG-tiny"))))


def test_load_condition_map_serves_one_map_to_every_sample_or_one_each(tmp_path):
    from dataset.conditions import load_condition_map

    one = np.arange(16).reshape(4, 4) % 3
    np.save(tmp_path / "one.npy", one)
    maps = load_condition_map(str(tmp_path / "one.npy"), 3, 16, 3)
    assert maps.shape == (3, 16) and torch.equal(maps[2], torch.from_numpy(one.reshape(-1)))
    np.save(tmp_path / "each.npy", np.stack([one.reshape(-1) * 0 + i for i in range(3)]))
    assert load_condition_map(str(tmp_path / "each.npy"), 3, 16, 3)[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"\(2, 16\)"):
        load_condition_map(str(tmp_path / "each.npy"), 2, 16, 3)
    np.save(tmp_path / "float.npy", one.astype(np.float32))
    with pytest.raises(ValueError, match="integer"):
        load_condition_map(str(tmp_path / "float.npy"), 3, 16, 3)
    with pytest.raises(ValueError, match="--condition-vocab-size"):
        load_condition_map(str(tmp_path / "one.npy"), 3, 16, 1)  # ids up to 2, vocabulary 0..0 (+ 1 = none)


def test_sample_c2i_samples_under_the_condition_map(tmp_path):
    """sample_c2i.py with --condition-map writes the picture of generate(..., condition_map=...)."""
    from PIL import Image
    from torchvision.utils import save_image

    from autoregressive.models.arpg import ARPG_models
    from autoregressive.render import tokens_to_view

    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"](condition_vocab_size=2)
    for weight in (model.head.weight, model.condition_embeddings.weight):
        torch.nn.init.normal_(weight, std=1.0)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    shape = np.zeros((8, 8), dtype=np.int64)
    shape[:, 3:5] = 1
    np.save(tmp_path / "shape.npy", shape)
    import sample_c2i
    from autoregressive.utils.cli import run_main

    # in this process, as sample_c2i.py's command line runs it (test_pretrained starts the script itself)
    run_main(lambda argv: sample_c2i.main(sample_c2i.get_args_parser().parse_args(argv)),
             ["--gpt-model", "ARPG-digits", "--gpt-ckpt", str(tmp_path / "model.pt"), "--condition-vocab-size", "2",
              "--condition-map", str(tmp_path / "shape.npy"), "--class-labels", "1", "4", "--step", "4",
              "--device", "cpu", "--out", str(tmp_path / "sampled.png")])
    model.eval()
    labels, maps = torch.tensor([1, 4]), torch.from_numpy(shape.reshape(1, -1)).expand(2, -1)
    expected = model.generate(labels, num_steps=4, generator=torch.Generator().manual_seed(0), condition_map=maps)
    unconditioned = model.generate(labels, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(expected, unconditioned)
    save_image(tokens_to_view(expected, 8, None, 17), tmp_path / "expected.png", nrow=2, padding=2)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sampled.png")), np.asarray(Image.open(tmp_path / "expected.png")))


def test_shape_agreement_counts_pixels_and_iou():
    from scripts.eval_digits_control import shape_agreement

    shapes = np.zeros((2, 64), dtype=np.int64)
    shapes[:, :4] = 1
    samples = np.zeros((2, 64), dtype=np.int64)
    samples[0, :4] = 16  # the same shape
    samples[1, 2:6] = 9  # half of it, and two pixels outside
    scores = shape_agreement(samples, shapes)
    assert scores["agreement"] == (64 + 60) / 128 and scores["iou"] == (1 + 2 / 6) / 2
    region = np.zeros(64, dtype=bool)
    region[:4] = True
    assert shape_agreement(samples, shapes, region) == {"agreement": 6 / 8, "iou": (1 + 2 / 4) / 2}


def test_the_controllable_python_block_of_the_docs_runs(tmp_path):
    from test_readme import marked_block

    from autoregressive.models.arpg import ARPG_models

    block = marked_block("control-python")
    torch.save({"model": ARPG_models["ARPG-digits"](condition_vocab_size=2).state_dict()}, tmp_path / "model.pt")
    np.save(tmp_path / "shape.npy", digit_shapes(load_digits_split("val")[0][:1]))
    for old, new in (('"results/digits_shape/000-ARPG-digits/checkpoints/0001200.pt"', repr(str(tmp_path / "model.pt"))),
                     ('"data/digits/val_shape/3/2.npy"', repr(str(tmp_path / "shape.npy")))):
        assert old in block, old
        block = block.replace(old, new)
    scope = {}
    exec(compile(block, "docs/controllable.md", "exec"), scope)
    assert torch.equal(scope["edited"][:, :32], scope["tokens"][:, :32]) and scope["edited"].shape == (2, 64)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_training_with_condition_maps(tmp_path, mode):
    """torchrun, 2 gloo processes: the condition maps reach the model under DDP and FSDP alike."""
    from test_train_c2i import final_state, finish, launch

    codes, conditions = write_pair(tmp_path)
    results = tmp_path / "results"
    finish(launch(codes, results, ["--max-steps", "3", "--data-parallel", mode, "--condition-path", str(conditions),
                                   "--weight-decay", "0"]))  # rows change only through gradients
    state = final_state(results, tmp_path)
    assert state.config["condition_vocab_size"] == 4
    from autoregressive.train.config import TrainConfig, build_model

    torch.manual_seed(0)  # the run's initial weights (--global-seed 0)
    initial = build_model(TrainConfig(**state.config)).condition_embeddings.weight
    trained = state.model["condition_embeddings.weight"]
    assert trained.shape == (5, 64) and not torch.allclose(trained[:4], initial[:4])  # the maps' rows learned


@pytest.mark.parametrize("entry, argv, words", [
    ("sample_c2i", "--gpt-ckpt {ckpt} --condition-map {w}/shape.npy --device cpu", ["--condition-vocab-size"]),
    ("sample_c2i", "--gpt-ckpt {ckpt} --condition-map {w}/nowhere.npy --condition-vocab-size 2", ["nowhere.npy"]),
    ("sample_c2i", "--gpt-ckpt {ckpt} --condition-map {w}/big.npy --condition-vocab-size 2 --device cpu",
     ["ids 3..3", "--condition-vocab-size"]),
    ("train_c2i", "--code-path {w}/codes --condition-path {w} --device cpu", ["condition.json"]),
    ("train_c2i", "--code-path {w}/codes --condition-path {w}/codes_edges --condition-dropout-p 2", ["--condition-dropout-p"]),
    ("train_c2i", "--code-path {w}/codes --condition-path {w}/codes_edges --init-from {w}/nowhere.pt --device cpu",
     ["--init-from", "nowhere.pt"]),
    ("extract_conditions_c2i", "--data-path {w}/no_images --condition-path {w}/out", ["--data-path", "not found"]),
])
def test_bad_condition_flags_end_in_one_line(tmp_path, capsys, entry, argv, words):
    import importlib

    from autoregressive.models.arpg import ARPG_models
    from autoregressive.utils.cli import run_main

    write_pair(tmp_path)
    np.save(tmp_path / "shape.npy", np.zeros(64, dtype=np.int64))
    np.save(tmp_path / "big.npy", np.full(64, 3, dtype=np.int64))
    torch.save({"model": ARPG_models["ARPG-digits"](condition_vocab_size=2).state_dict()}, tmp_path / "model.pt")
    argv = ["--gpt-model", "ARPG-digits", "--class-labels", "3", *argv.format(w=tmp_path, ckpt=tmp_path / "model.pt").split()] \
        if entry == "sample_c2i" else argv.format(w=tmp_path).split()
    module = importlib.import_module(entry)
    main = getattr(module, "cli", None) or (
        (lambda args: module.main(module.get_args_parser().parse_args(args))) if entry == "sample_c2i" else module.main)
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    message = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(message) == 1 and message[0].startswith("error:"), message
    assert all(word in message[0] for word in words), message[0]

"""The web demo's actions without gradio: finding the checkpoint, the grid, painted-mask edits, and bad
input answered by a message instead of an exception."""
import os
import sys

import numpy as np
import pytest
import torch

from autoregressive.demo_app import DIGITS_ZOOM, DemoApp, find_checkpoint, painted_area
from autoregressive.models.arpg import ARPG_models

SAMPLING = dict(steps=8, cfg_scale=2.0, cfg_schedule="linear", temperature=1.0, seed=0)
EDIT_ZOOM = DIGITS_ZOOM // 2  # the edit row shows digits at 128 px
SIDE = 8 * DIGITS_ZOOM  # a digit in the editor: 256 px


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"]()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the head starts at zero: samples would be uniform noise
    path = tmp_path_factory.mktemp("run") / "digits.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def app(digits_ckpt):
    app = DemoApp.open(gpt_ckpt=digits_ckpt, device="cpu")
    assert app.demo is not None, app.status
    return app


def brush(rows: slice, cols: slice = slice(None)) -> np.ndarray:
    """An RGBA layer as the editor returns it: opaque red where painted, transparent elsewhere."""
    layer = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    layer[rows, cols] = (255, 48, 48, 255)
    return layer


def tiles(row: np.ndarray, size: int):
    """Cut a tiled row (2 px padding) back into its images."""
    count = (row.shape[1] - 2) // (size + 2)
    return [row[2:2 + size, 2 + i * (size + 2):2 + i * (size + 2) + size] for i in range(count)]


def test_finds_the_newest_digits_checkpoint(tmp_path):
    assert find_checkpoint(str(tmp_path)) is None
    older = tmp_path / "digits" / "000-ARPG-digits" / "checkpoints" / "0001200.pt"
    newer = tmp_path / "digits" / "001-ARPG-digits" / "checkpoints" / "0000600.pt"
    for path, mtime in ((older, 1_000), (newer, 2_000)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    (tmp_path / "other" / "000-ARPG-L" / "checkpoints").mkdir(parents=True)
    (tmp_path / "other" / "000-ARPG-L" / "checkpoints" / "0009999.pt").write_bytes(b"")
    assert find_checkpoint(str(tmp_path)) == str(newer)


def test_without_a_checkpoint_every_action_answers_with_the_fix(tmp_path):
    app = DemoApp.open(results_dir=str(tmp_path))
    assert app.demo is None and "bash scripts/demo.sh" in app.status
    result, message = app.generate("1 2", 1, **SAMPLING)
    assert result is None and message.startswith("Error: no digits checkpoint")
    result, message = app.edit({"background": np.zeros((SIDE, SIDE, 3), np.uint8), "layers": [brush(slice(0, 9))]},
                               "inpaint", 1, 1, **SAMPLING)
    assert result is None and "scripts/demo.sh" in message
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert DemoApp.open(gpt_ckpt=str(broken)).demo is None
    assert "could not load" in DemoApp.open(gpt_ckpt=str(tmp_path / "missing.pt")).status


def test_generate_lays_out_a_row_per_class_and_follows_the_seed(app):
    (grid, samples), message = app.generate("3, 5 7", 2, **SAMPLING)
    assert message == "6 samples of classes [3, 5, 7], seed 0"
    assert samples.shape == (6, SIDE, SIDE, 3) and samples.dtype == np.uint8
    assert grid.shape == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2, 3)  # 3 rows of 2 digits at 64 px, 2 px apart
    (same, _), _ = app.generate("3, 5 7", 2, **SAMPLING)
    (other, _), _ = app.generate("3, 5 7", 2, **{**SAMPLING, "seed": 1})
    assert np.array_equal(grid, same) and not np.array_equal(grid, other)


def test_a_rendered_sample_reads_back_as_its_own_tokens(app):
    tokens = torch.randint(0, 17, (3, 64), generator=torch.Generator().manual_seed(0))
    for picture, expected in zip(app.demo.render(tokens), tokens):
        assert torch.equal(app.demo.encode(picture).reshape(-1), expected)


def test_inpaint_keeps_the_unpainted_half_and_outpaint_the_painted_half(app):
    (_, samples), _ = app.generate("4", 1, **SAMPLING)
    value = {"background": samples[0], "layers": [brush(slice(SIDE // 2, SIDE))]}
    for task, kept in (("inpaint", slice(0, EDIT_ZOOM * 4)), ("outpaint", slice(EDIT_ZOOM * 4, EDIT_ZOOM * 8))):
        row, message = app.edit(value, task, 4, 3, **SAMPLING)
        assert message.startswith(f"{task}: kept 32 of 64 tokens"), message
        original, dimmed, *results = tiles(row, EDIT_ZOOM * 8)
        assert len(results) == 3
        assert all(np.array_equal(result[kept], original[kept]) for result in results)
        changed = slice(EDIT_ZOOM * 4, None) if task == "inpaint" else slice(0, EDIT_ZOOM * 4)
        assert any(not np.array_equal(result[changed], original[changed]) for result in results)
        assert (dimmed[changed] <= original[changed]).all() and np.array_equal(dimmed[kept], original[kept])


def test_class_edit_regenerates_under_the_chosen_class(app):
    (_, samples), _ = app.generate("7", 1, **SAMPLING)
    value = {"background": samples[0], "layers": [brush(slice(SIDE // 2, SIDE))]}
    row, message = app.edit(value, "class-edit", 9, 2, **SAMPLING)
    assert "under class 9" in message
    inpainted, _ = app.edit(value, "inpaint", 7, 2, **SAMPLING)
    assert not np.array_equal(row, inpainted)  # same seed, other class


def test_a_token_counts_as_painted_from_a_quarter_of_its_area(app):
    zoom = DIGITS_ZOOM
    mostly = np.zeros((SIDE, SIDE), np.float32)
    mostly[:zoom // 2, :zoom // 2] = 1  # a quarter of token (0, 0)
    mostly[zoom:zoom + zoom // 8, :zoom] = 1  # an eighth of token (1, 0)
    mask = app.demo.token_mask(mostly)
    assert mask[0, 0] and not mask[1, 0] and int(mask.sum()) == 1


def test_editor_values_with_grey_pictures_and_opaque_layers():
    picture, painted = painted_area({"background": np.full((4, 4), 9, np.uint8),
                                     "layers": [np.full((4, 4, 3), [0, 255, 0], np.uint8)]})
    assert picture.shape == (4, 4, 3) and (picture == 9).all() and (painted == 1).all()


@pytest.mark.parametrize("value, task, label, steps, needle", [
    ({"background": np.zeros((SIDE, SIDE, 3), np.uint8), "layers": []}, "inpaint", 1, 8, "nothing is painted"),
    ({"background": np.zeros((SIDE, SIDE, 3), np.uint8), "layers": [brush(slice(None))]}, "inpaint", 1, 8,
     "covers the whole image"),
    ({"background": np.zeros((SIDE, SIDE, 3), np.uint8), "layers": [brush(slice(None))[:100]]}, "inpaint", 1, 8,
     "the mask is 256x100 but the image is 256x256"),
    ({"background": None, "layers": []}, "inpaint", 1, 8, "no image to edit"),
    (None, "inpaint", 1, 8, "no image to edit"),
    ({"background": np.zeros((SIDE, SIDE, 3), np.uint8), "layers": [brush(slice(0, 64))]}, "inpaint", 12, 8,
     "class id 12 is out of range"),
    ({"background": np.zeros((SIDE, SIDE, 3), np.uint8), "layers": [brush(slice(0, 64))]}, "inpaint", 1, 0,
     "num_steps must be"),
    ({"background": np.zeros((SIDE, SIDE, 3), np.uint8), "layers": [brush(slice(0, 64))]}, "erase", 1, 8,
     "unknown task"),
])
def test_bad_edits_are_answered_with_a_message(app, value, task, label, steps, needle):
    result, message = app.edit(value, task, label, 2, **{**SAMPLING, "steps": steps})
    assert result is None and message.startswith("Error: ") and needle in message


@pytest.mark.parametrize("classes, per_class, temperature, needle", [
    ("", 1, 1.0, "at least one class"), ("2, x", 1, 1.0, "whole numbers"), ("10", 1, 1.0, "out of range"),
    ("1 2", 40, 1.0, "1 to 64 images"), ("1", 1, -1.0, "temperature must be >= 0"),
])
def test_bad_generations_are_answered_with_a_message(app, classes, per_class, temperature, needle):
    result, message = app.generate(classes, per_class, **{**SAMPLING, "temperature": temperature})
    assert result is None and message.startswith("Error: ") and needle in message


def test_app_without_gradio_says_how_to_install_it(monkeypatch):
    from app import get_args_parser, main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(SystemExit, match="pip install gradio"):
        main(get_args_parser().parse_args([]))


def test_imagenet_path_crops_picture_and_mask_alike(tmp_path):
    """A VQ model (tiny ARPG, random VQ-16): an uploaded 400x256 picture is ADM centre-cropped to 256 and so is
    its mask; painting the left 200 columns leaves the crop's left 128 columns, 8 of the 16 token columns."""
    from tokenizer.vq_model import VQ_models

    torch.manual_seed(0)
    gpt, vq = tmp_path / "gpt.pt", tmp_path / "vq.pt"
    torch.save({"model": ARPG_models["ARPG-tiny"]().state_dict()}, gpt)
    torch.save({"model": VQ_models["VQ-16"]().state_dict()}, vq)
    app = DemoApp.open("ARPG-tiny", str(gpt), vq_ckpt=str(vq), device="cpu")
    assert app.demo is not None and app.demo.grid == 16, app.status
    (grid, samples), message = app.generate("207", 1, **SAMPLING)
    assert samples.shape == (1, 256, 256, 3), message
    picture = np.random.default_rng(0).integers(0, 256, (256, 400, 3), dtype=np.uint8)
    layer = np.zeros((256, 400, 4), np.uint8)
    layer[:, :200, 3] = 255
    row, message = app.edit({"background": picture, "layers": [layer]}, "inpaint", 207, 1, **SAMPLING)
    assert message.startswith("inpaint: kept 128 of 256 tokens"), message
    assert row.shape == (256 + 4, 3 * 256 + 4 * 2, 3)
    assert "--vq-ckpt" in DemoApp.open("ARPG-tiny", str(gpt), device="cpu").status

import numpy as np
import pytest
import torch
from PIL import Image

from autoregressive import editing
from autoregressive.generate import SamplingConfig, generate
from conftest import build_tiny


def sampler(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sampling = SamplingConfig(num_steps=3, cfg_scale=2.0)
    return lambda labels, known, mask: generate(model, labels, sampling, generator=generator, known=known, known_mask=mask)


def test_mask_builders():
    keep = editing.box_mask(4, 1, 0, 3, 2)
    assert keep.tolist() == [[True, False, False, True], [True, False, False, True], [True] * 4, [True] * 4]
    assert editing.shape_mask("bottom", 4)[2:].any().item() is False and editing.shape_mask("bottom", 4)[:2].all()
    assert editing.shape_mask("left", 4)[:, :2].any().item() is False
    border = editing.shape_mask("border", 6, width=2)
    assert border.sum() == 4 and border[2:4, 2:4].all()
    assert editing.pixel_box_to_tokens((10, 0, 40, 17), 16) == (0, 0, 3, 2)


def test_mask_from_png(tmp_path):
    pixels = np.zeros((64, 64), dtype=np.uint8)
    pixels[:, 32:] = 255  # right half white = regenerate
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    keep = editing.mask_from_png(str(tmp_path / "mask.png"), 4)
    assert keep[:, :2].all() and not keep[:, 2:].any()


@pytest.mark.parametrize("build,match", [
    (lambda: editing.box_mask(4, 0, 0, 5, 2), "inside"),
    (lambda: editing.box_mask(4, 2, 2, 2, 3), "non-empty"),
    (lambda: editing.shape_mask("border", 4, width=2), "border width"),
    (lambda: editing.shape_mask("ring", 4), "unknown mask shape"),
])
def test_bad_masks_are_explained(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_inpainting_keeps_the_known_tokens_and_checks_its_inputs():
    model = build_tiny()
    tokens = torch.randint(0, 32, (4, 4))
    keep = editing.shape_mask("center", 4)
    out = editing.fill(sampler(model), tokens, keep, label=3, num_samples=3)
    assert out.shape == (3, 16) and torch.equal(out[:, keep.view(-1)], tokens.view(-1)[keep.view(-1)].expand(3, -1))
    with pytest.raises(ValueError, match="nothing to regenerate"):
        editing.fill(sampler(model), tokens, torch.ones(4, 4, dtype=torch.bool), 3, 1)
    with pytest.raises(ValueError, match="mask has 9 positions"):
        editing.fill(sampler(model), tokens, torch.zeros(3, 3, dtype=torch.bool), 3, 1)
    with pytest.raises(ValueError, match="out of range"):
        editing.fill(sampler(model), tokens, keep, label=7, num_samples=1)


@pytest.mark.parametrize("out_size", [6, 8])
def test_expansion_covers_the_canvas_and_keeps_the_original(out_size):
    model = build_tiny()
    tokens = torch.randint(0, 32, (4, 4))
    canvas = editing.expand(sampler(model), tokens, out_size, label=1, num_samples=2)
    assert canvas.shape == (2, out_size, out_size) and canvas.min() >= 0 and canvas.max() < 32
    offset = (out_size - 4) // 2
    assert torch.equal(canvas[:, offset:offset + 4, offset:offset + 4], tokens.expand(2, 4, 4))
    with pytest.raises(ValueError, match="must exceed"):
        editing.expand(sampler(model), tokens, 4, 1, 1)


def test_edit_cli_on_a_digits_checkpoint(tmp_path):
    from autoregressive.models.arpg import ARPG_models
    from edit_c2i import get_args_parser, main

    torch.save({"model": ARPG_models["ARPG-digits"]().state_dict()}, tmp_path / "d.pt")
    np.save(tmp_path / "codes.npy", np.random.default_rng(0).integers(0, 17, (8, 8)))
    out = tmp_path / "edit.png"
    main(get_args_parser().parse_args(["--task", "inpaint", "--gpt-model", "ARPG-digits", "--gpt-ckpt",
                                       str(tmp_path / "d.pt"), "--codes", str(tmp_path / "codes.npy"), "--box", "0", "4",
                                       "8", "8", "--class-label", "5", "--num-samples", "2", "--step", "4",
                                       "--device", "cpu", "--out", str(out)]))
    assert Image.open(out).size == (4 * 32 + 5 * 2, 32 + 2 * 2)  # input, mask, 2 results
    with pytest.raises(ValueError, match="exactly one mask"):
        main(get_args_parser().parse_args(["--task", "inpaint", "--gpt-model", "ARPG-digits", "--gpt-ckpt",
                                           str(tmp_path / "d.pt"), "--digit-index", "0", "--device", "cpu",
                                           "--out", str(out)]))

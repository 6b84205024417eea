import numpy as np
import pytest
import torch

from dataset.digits import load_digits_split
from evaluations.digits import class_accuracy, fit_digit_classifier, frechet_distance, judge


@pytest.fixture(scope="module")
def digits():
    return load_digits_split("train"), load_digits_split("val")


def test_classifier_recognises_held_out_real_digits(digits):
    (train_x, train_y), (val_x, val_y) = digits
    classifier = fit_digit_classifier(train_x, train_y)
    assert class_accuracy(classifier, val_x, val_y) >= 0.98
    assert class_accuracy(classifier, val_x, np.random.default_rng(0).permutation(val_y)) < 0.3


def test_frechet_distance_of_real_noise_and_matching_gaussians(digits):
    (train_x, train_y), _ = digits
    report = judge(train_x[:1000], train_y[:1000])
    assert report.frechet < 0.1 and 0.03 < report.real_floor < 0.1 and report.accuracy > 0.98
    noise = np.random.default_rng(0).integers(0, 17, (1000, 64))
    assert judge(noise, train_y[:1000]).frechet > 1.0
    a = np.random.default_rng(1).normal(size=(4000, 3))
    assert frechet_distance(a, a + 1.0) == pytest.approx(3.0, abs=0.02)


def test_sample_grid_png_for_a_digits_model(tmp_path):
    from autoregressive.models.arpg import ARPG_models
    from PIL import Image
    from sample_c2i import get_args_parser, main

    torch.save({"model": ARPG_models["ARPG-digits"]().state_dict()}, tmp_path / "d.pt")
    out = tmp_path / "grid.png"
    main(get_args_parser().parse_args(["--gpt-model", "ARPG-digits", "--gpt-ckpt", str(tmp_path / "d.pt"),
                                       "--class-labels", "0", "1", "2", "--samples-per-class", "2", "--step", "4",
                                       "--device", "cpu", "--out", str(out)]))
    width, height = Image.open(out).size
    assert (width, height) == (2 * 32 + 3 * 2, 3 * 32 + 4 * 2)  # 2 columns, 3 rows of 32x32 with padding 2
    with pytest.raises(ValueError, match="out of range"):
        main(get_args_parser().parse_args(["--gpt-model", "ARPG-digits", "--gpt-ckpt", str(tmp_path / "d.pt"),
                                           "--class-labels", "10", "--device", "cpu", "--out", str(out)]))

"""scripts/bench_vq_decode.py on the CPU with a tiny VQ model: every variant decodes the same codes, and each
row compares its pixels with the first variant's."""
import numpy as np
import pytest

from scripts import bench_vq_decode
from autoregressive.utils.cli import UserError
from tokenizer.vq_model import VQConfig

TINY = VQConfig(codebook_size=64, codebook_embed_dim=4, z_channels=16, base_channels=8, norm_groups=4,
                encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2), num_res_blocks=1, usage_buffer_size=8)


def test_rows_compare_each_variant_with_the_first():
    rows = bench_vq_decode.bench([2, 3], ["eager", "eager+cl+bm"], 2, "cpu", TINY)
    assert [(batch, name) for batch, name, *_ in rows] == [(2, "eager"), (2, "eager+cl+bm"), (3, "eager"), (3, "eager+cl+bm")]
    assert all(rate > 0 for _, _, rate, _, _ in rows)
    assert rows[0][3:] == (0, 0.0)  # the reference against itself
    # channels_last reorders the convolutions' sums: at most a grey level apart, never another image
    assert all(worst <= 1 and share < 0.01 for _, name, _, worst, share in rows if name == "eager+cl+bm")


def test_unknown_variants_are_refused():
    with pytest.raises(UserError, match=r"unknown fast, eager\+nhwc; a base of eager"):
        bench_vq_decode.parse_variants("eager,fast,eager+nhwc")


def test_saved_pixels_compare_with_another_runs(tmp_path, capsys):
    saved = str(tmp_path / "first")
    bench_vq_decode.bench([2], ["eager", "eager+cl"], 1, "cpu", TINY, save_pixels=saved)
    first = np.load(tmp_path / "first" / "b2-eager.npy")
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8  # TINY upsamples the 16 x 16 codes twice
    bench_vq_decode.bench([2], ["eager", "eager+cl"], 1, "cpu", TINY, compare_pixels=saved)
    out = capsys.readouterr().out
    assert f"b2 eager: the same pixels as {saved}/b2-eager.npy" in out
    np.save(tmp_path / "first" / "b2-eager.npy", first ^ 1)  # every value a level off
    bench_vq_decode.bench([2], ["eager"], 1, "cpu", TINY, compare_pixels=saved)
    assert f"b2 eager: DIFFERENT from {saved}/b2-eager.npy: 100.000% of values, at most 1 levels" in capsys.readouterr().out


def test_a_tuned_compiled_variant_is_known_and_builds_on_the_cpu():
    assert bench_vq_decode.parse_variants("compiled+cl+tuned") == ["compiled+cl+tuned"]
    rows = bench_vq_decode.bench([2], ["eager", "compiled+tuned"], 1, "cpu", TINY)
    assert rows[1][3:] == (0, 0.0)  # nothing is compiled on the CPU: the eager pixels

"""scripts/bench_sample_ddp.py's arithmetic: stages, steady rate and the 50,000-image projection (the runs
themselves need a GPU and the official code)."""
import pytest

from autoregressive.utils.cli import UserError
import numpy as np
import torch

from scripts.bench_sample_ddp import (PROJECTED, InProcess, compare_samples, get_args_parser, loading_steps, main,
                                      our_options, pipeline_rates, projected, row, steady_rate, table)


def test_stages_and_projection_from_a_timings_record():
    record = {"launch_wall": 100.0, "seconds": {"model": 30.0, "vq_decode": 10.0, "write": 50.0, "pack": 4.0},
              "marks": {"loaded": 108.0, "first_batch_sampled": 120.0, "sampled": 140.0, "packed": 144.0}}
    r = row("ours", 100, 1100, 45.0, record)
    assert r["startup"] == 20.0 and r["steady"] == 50.0  # 1,000 images after the first batch in 20 s
    # the run's 41 s to its last file, the other 48,900 images at 50 img/s, packing scaled
    assert projected(r) == pytest.approx(41.0 + (PROJECTED - 1100) / 50.0 + 4.0 * PROJECTED / 1100)
    official = dict(r, run="official", steady=5.0)
    lines = table([official, r], official, {100: InProcess(model=100.0, vq=300.0, both=80.0)})
    # start-up: 8 s loading, 12 s until the first batch's tokens
    assert lines[-1].startswith("| ours | 100 | 1100 | 45.0 | 20.0 (8.0 + 12.0) | 30.0 | 10.0 | 50.0 | 4.0 | 50.0 | "
                                "50% of 100 |")
    assert lines[-1].endswith(f"| {projected(official) / projected(r):.1f}x |")


def test_loading_is_split_at_the_marks_each_script_makes():
    ours = {"launch_wall": 100.0, "marks": {"imported": 103.0, "distributed": 103.5, "loaded": 110.0}}
    assert loading_steps(ours) == ("torchrun, Python and imports 3.0 s, process group 0.5 s, "
                                   "checkpoints onto the GPU 6.5 s")
    official = {"launch_wall": 100.0, "marks": {"imported": 104.0, "loaded": 111.0}}  # no process-group mark
    assert loading_steps(official) == "torchrun, Python and imports 4.0 s, checkpoints onto the GPU 7.0 s"


def test_a_steady_rate_above_the_pipelines_own_is_a_backlog_and_projects_at_the_pipelines():
    record = {"launch_wall": 0.0, "seconds": {"pack": 0.0}, "marks": {"first_batch_sampled": 10.0, "sampled": 12.0}}
    r = row("ours --no-png", 100, 1100, 30.0, record)  # 500 img/s: files drained faster than the GPU makes them
    assert projected(r, cap=200.0) == pytest.approx(30.0 + (PROJECTED - 1100) / 200.0)
    assert projected(r, cap=1000.0) == projected(r) == pytest.approx(30.0 + (PROJECTED - 1100) / 500.0)
    line = table([r], None, {100: InProcess(model=250.0, vq=600.0, both=200.0)})[-1]
    assert "| 200% of 250 |" in line and f"| {projected(r, cap=200.0):.0f} |" in line  # capped at both together


def test_the_official_run_needs_whole_thousands_of_images(tmp_path):
    args = ["--official-repo", str(tmp_path), "--official-images", "1500", "--work-dir", str(tmp_path / "w")]
    assert get_args_parser().parse_args(args).official_images == 1500
    with pytest.raises(ValueError, match="multiple of 1000"):
        main(args)
    with pytest.raises(ValueError, match="--concurrent-batches must be >= 1"):
        main([*args[:2], "--concurrent-batches", "0", *args[4:]])


def test_the_steady_rate_is_that_of_the_second_half_of_the_batches():
    written = [[0.0, 10], [50.0, 10], [51.0, 10], [52.0, 10], [53.0, 10], [55.0, 10]]  # a slow start
    assert steady_rate(written) == pytest.approx(20 / 3.0)
    assert steady_rate(written[:3]) is None


def test_our_flags_reach_our_runs_and_bad_ones_are_refused():
    from scripts.bench_sample_ddp import parse_our_flags

    assert parse_our_flags("--vq-precision fp16 --kv-cache=int8") == ["--vq-precision", "fp16", "--kv-cache=int8"]
    assert parse_our_flags("") == []
    with pytest.raises(UserError, match="--per-proc-batch-size is set by the benchmark itself"):
        parse_our_flags("--per-proc-batch-size 64")
    with pytest.raises(UserError, match="does not take --vq-dtype-typo fp16"):
        parse_our_flags("--vq-dtype-typo fp16")
    with pytest.raises(UserError, match="--our-flags: argument --vq-precision: invalid choice: 'fp17'"):
        parse_our_flags("--vq-precision fp17")


def test_compare_samples_says_how_far_two_runs_differ():
    images = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    labels = np.arange(4)
    assert compare_samples(images, labels, images.copy(), labels) == "equal"
    other = images.copy()
    other[1, 0, 0, 0] = 2
    other[3, 1, 1, 2] = 1
    assert compare_samples(images, labels, other, labels) == \
        "DIFFERENT pixels: 2 of 4 images, 4.167% of values, at most 2 levels"
    assert compare_samples(images, labels, images, labels[::-1]).startswith("DIFFERENT samples")


class CountingDecoder:
    """A VQ decoder stand-in (grey images) that counts the batches it decodes."""

    class config:
        codebook_embed_dim = 8

    def __init__(self):
        self.batches = 0

    def decode_code(self, tokens, shape):
        self.batches += 1
        return torch.zeros(shape[0], 3, 4 * shape[2], 4 * shape[3])


def test_the_in_process_rates_time_the_sampler_the_decoder_and_both_on_every_batch():
    from autoregressive.fast_generate import make_sampler
    from autoregressive.models.arpg import ARPG_models
    from autoregressive.sampler_pool import SamplerPool
    from autoregressive.sampling import SamplingConfig

    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"]().eval()
    vq, device = CountingDecoder(), torch.device("cpu")
    pool = SamplerPool(lambda: make_sampler(model), 2, device)
    try:
        rates = pipeline_rates(model, vq, pool, 4, SamplingConfig(num_steps=4, cfg_scale=2.0), device, reps=2)
    finally:
        pool.close()
    assert all(rate > 0 for rate in rates)
    # 8 batches (4 x 2 at once), decoded alone and beside the sampling, in the warm-up and each repetition
    assert vq.batches == (1 + 2) * 2 * 8


def test_the_in_process_rates_use_the_sampler_and_decoder_of_our_flags():
    default = our_options([])
    assert (default.compile, default.compile_layers, default.vq_precision) == (True, False, "none")
    opted = our_options(["--compile-layers", "--vq-precision", "fp16"])
    assert (opted.compile, opted.compile_layers, opted.vq_precision) == (True, True, "fp16")
    assert our_options(["--no-compile"]).compile is False

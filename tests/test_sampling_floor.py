"""scripts/sampling_floor.py's count of a sampling batch's work, against closed forms."""
import pytest
import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.sampling import SamplingConfig, step_sizes
from autoregressive.utils.cli import UserError
from scripts import sampling_floor


def meta_model(name):
    with torch.device("meta"):
        return ARPG_models[name]()


def test_matmul_flops_count_each_token_once_through_each_stack():
    model, batch = meta_model("ARPG-tiny"), 3
    sampling = SamplingConfig(num_steps=8, cfg_scale=4.0)
    sizes = step_sizes(model.config.block_size, 8, "arccos")
    rows, n = 2 * batch, model.config.block_size  # guidance doubles the rows
    self_stack = sum(p.numel() for name, p in model.layers.named_parameters()
                     if p.dim() == 2 and (name.startswith("self_dec") or name.startswith("to_kv")))
    cross_stack = sum(p.numel() for name, p in model.layers.named_parameters()
                      if p.dim() == 2 and name.startswith("cross_dec"))
    fed = model.config.cls_token_num + n - sizes[-1]  # the class token, then every draw but the last step's
    expected = 2 * rows * (fed * self_stack + n * (cross_stack + model.head.weight.numel()))
    work = sampling_floor.decoding_work(model, batch, sampling)
    assert work.matmul_flops == expected
    assert work.weight_bytes == 8 * 2 * (self_stack + cross_stack + model.head.weight.numel())


def test_cache_reads_and_the_fp8_cache():
    model, sampling = meta_model("ARPG-L"), SamplingConfig(num_steps=64, cfg_scale=4.5, cfg_schedule="constant")
    bf16 = sampling_floor.decoding_work(model, 256, sampling)
    fp8 = sampling_floor.decoding_work(model, 256, sampling, cache_bytes_each=1)
    assert round(bf16.cache_bytes / 1e9, 1) == 298.5  # docs/speed.md's floor table: 298 GB for ARPG-L at batch 256
    config = model.config
    # codes are half the bytes; each vector adds one float32 scale per head
    assert fp8.cache_bytes == bf16.cache_bytes / 2 * (1 + 4 * config.n_head / config.dim)
    assert fp8.matmul_seconds == bf16.matmul_seconds and fp8.seconds < bf16.seconds


def test_the_table_prints_every_model_batch_and_cache(capsys):
    sampling_floor.main(["--models", "ARPG-tiny", "--batch-sizes", "2", "4", "--step", "4"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ARPG-tiny")]
    assert [row.split(" | ")[1:3] for row in rows] == [["2", "bf16"], ["2", "int8/fp8"], ["4", "bf16"], ["4", "int8/fp8"]]


def test_ceilings_are_measured_as_rates():
    flops, bytes_per_s = sampling_floor.measure_ceilings(torch.device("cpu"), copy_bytes=1 << 20, matmul_size=64,
                                                         reps=3)
    assert 1e6 < flops < 1e15 and 1e6 < bytes_per_s < 1e13  # a CPU's rates, within sane bounds


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_measured_floors_need_a_gpu():
    with pytest.raises(UserError, match="--measure needs a CUDA GPU"):
        sampling_floor.main(["--models", "ARPG-tiny", "--measure"])

import math

import numpy as np
import pytest
import torch

from autoregressive.sampling import draw_tokens, filter_logits, guidance_scale, random_orders, step_sizes


@pytest.mark.parametrize("schedule", ["arccos", "cosine"])
@pytest.mark.parametrize("num_tokens,num_steps", [(256, 64), (256, 32), (256, 256), (64, 10), (16, 4), (5, 1)])
def test_step_sizes_sum_to_tokens_and_each_is_positive(schedule, num_tokens, num_steps):
    sizes = step_sizes(num_tokens, num_steps, schedule)
    assert len(sizes) == num_steps and sum(sizes) == num_tokens and min(sizes) >= 1


def test_step_sizes_follow_the_released_formula():
    # arccos, N=256, 64 steps: step 0 keeps int(256 * arccos(1/64) / (pi/2)) masked.
    kept = int(256 * np.arccos(1 / 64) / (math.pi / 2))
    assert step_sizes(256, 64, "arccos")[0] == 256 - kept
    kept_cos = int(256 * np.cos(math.pi / 2 / 64))
    assert step_sizes(256, 64, "cosine")[0] == max(1, 256 - kept_cos)
    assert step_sizes(16, 16, "arccos") == [1] * 16


def test_bad_schedule_and_step_count():
    with pytest.raises(ValueError, match="sample schedule"):
        step_sizes(16, 4, "linear")
    with pytest.raises(ValueError, match="num_steps"):
        step_sizes(16, 17, "arccos")
    with pytest.raises(ValueError, match="cfg schedule"):
        guidance_scale(4.0, "cosine", 1, 16)


def test_guidance_scale_schedules():
    assert guidance_scale(4.0, "constant", 3, 16) == 4.0
    assert guidance_scale(4.0, "linear", 16, 16) == 4.0
    assert guidance_scale(4.0, "linear", 8, 16) == 2.5


def test_top_k_keeps_the_k_best_per_position():
    logits = torch.tensor([[[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, -1.0, 0.0]]])  # (B=1, n=2, V=4)
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[[False, True, False, True], [True, True, False, False]]]


def test_top_p_keeps_the_nucleus_per_position():
    probs = torch.tensor([[[0.5, 0.3, 0.15, 0.05], [0.05, 0.05, 0.1, 0.8]]])
    kept = filter_logits(probs.log(), top_p=0.7).isfinite()
    # row 0: 0.5 < 0.7, 0.5 + 0.3 > 0.7 -> the two best; row 1: 0.8 > 0.7 at once -> the best only
    assert kept.tolist() == [[[True, True, False, False], [False, False, False, True]]]
    both = filter_logits(probs.log(), top_k=1, top_p=0.99).isfinite()
    assert both.sum(-1).tolist() == [[1, 1]]


def test_draw_tokens_greedy_and_seeded():
    logits = torch.randn(3, 5, 11)
    assert torch.equal(draw_tokens(logits, temperature=0), logits.argmax(-1))
    a = draw_tokens(logits, generator=torch.Generator().manual_seed(1))
    b = draw_tokens(logits, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 5)
    only = draw_tokens(logits, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(only, logits.argmax(-1))


def test_random_orders_are_permutations_and_differ_per_row():
    orders = random_orders(4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(orders.sort(1).values, torch.arange(16).expand(4, -1))
    assert len({tuple(row.tolist()) for row in orders}) == 4


def test_sampling_config_checks_both_schedules_against_the_tables():
    from autoregressive.sampling import CFG_SCHEDULES, SAMPLE_SCHEDULES, SamplingConfig

    for schedule in SAMPLE_SCHEDULES:
        SamplingConfig(sample_schedule=schedule)
    for schedule in CFG_SCHEDULES:
        SamplingConfig(cfg_schedule=schedule)
    with pytest.raises(ValueError, match="unknown sample schedule 'bogus'; choose one of"):
        SamplingConfig(num_steps=1, sample_schedule="bogus")
    with pytest.raises(ValueError, match="unknown cfg schedule"):
        SamplingConfig(cfg_schedule="cosine")

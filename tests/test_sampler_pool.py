"""autoregressive/sampler_pool.py on CPU: several workers give each batch the tokens of one sampler alone."""
import threading
import time

import pytest
import torch

from autoregressive.fast_generate import make_sampler
from autoregressive.models.arpg import ARPG_models
from autoregressive.sampler_pool import SamplerPool, default_concurrent_batches
from autoregressive.sampling import SamplingConfig, batch_generator


def digits_model():
    torch.manual_seed(0)
    model = ARPG_models["ARPG-digits"]().eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model


def test_batches_at_once_give_the_tokens_of_one_at_a_time():
    model, sampling = digits_model(), SamplingConfig(num_steps=8, cfg_scale=2.0)
    batches = [(torch.arange(first, first + 4) % 10, first) for first in range(0, 24, 4)]
    one = make_sampler(model)
    expected = [one(labels, sampling, batch_generator("cpu", 0, first)) for labels, first in batches]
    pool = SamplerPool(lambda: make_sampler(model), 3, torch.device("cpu"))
    try:
        futures = [pool.submit(labels, sampling, batch_generator("cpu", 0, first)) for labels, first in batches]
        got = [future.result() for future in futures]
    finally:
        pool.close()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert pool.warm and pool.busy_seconds > 0


def test_batch_j_goes_to_worker_j_mod_size_and_errors_reach_the_caller():
    names = []

    def make():
        def sample(j):
            names.append((j, threading.current_thread().name))
            if j == 4:
                raise ValueError("batch 4 failed")
            return torch.tensor([j])
        return sample

    pool = SamplerPool(make, 2, torch.device("cpu"))
    try:
        futures = [pool.submit(j) for j in range(5)]
        assert [int(f.result()) for f in futures[:4]] == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="batch 4 failed"):
            futures[4].result()
    finally:
        pool.close()
    assert sorted(names) == [(j, f"sampler-{j % 2}") for j in range(5)]


def test_close_finishes_the_batch_under_way_and_drops_the_queued_ones():
    started, release = threading.Event(), threading.Event()

    def make():
        def sample(j):
            started.set()
            release.wait(10)
            return torch.tensor([j])
        return sample

    pool = SamplerPool(make, 1, torch.device("cpu"))
    running, queued = pool.submit(0), pool.submit(1)
    assert started.wait(10) and not pool.warm
    threading.Timer(0.2, release.set).start()
    pool.close()
    assert int(running.result()) == 0 and queued.cancelled()


def test_the_default_keeps_about_128_images_in_flight_and_at_most_4_batches():
    assert [default_concurrent_batches(b) for b in (1, 16, 32, 50, 64, 100, 128, 250)] == [4, 4, 4, 2, 2, 1, 1, 1]


def test_imap_runs_batches_alone_until_every_worker_has_captured_then_size_at_once_in_order():
    lock, running, seen = threading.Lock(), [0], []  # seen: (job, batches running when it started)

    def make():
        def sample(j):
            with lock:
                running[0] += 1
                seen.append((j, running[0]))
            time.sleep(0.2)  # long enough for the batches submitted together to overlap on a busy machine
            with lock:
                running[0] -= 1
            return torch.tensor([j])
        return sample

    pool = SamplerPool(make, 3, torch.device("cpu"))
    try:
        results = []
        for tag, tokens in pool.imap((j, (j,), {}) for j in range(9)):
            results.append((tag, int(tokens), pool.warm))
    finally:
        pool.close()
    assert results == [(j, j, True) for j in range(9)]  # in job order, none before every worker had a batch
    assert seen[:3] == [(0, 1), (1, 1), (2, 1)]  # the captures ran alone
    assert max(count for _, count in seen[3:]) == 3


def test_the_benchmarks_batches_are_labelled_and_seeded_by_their_first_sample():
    from scripts.bench_common import pool_batches

    model, sampling = digits_model(), SamplingConfig(num_steps=8, cfg_scale=2.0)
    one = make_sampler(model)
    expected = [one(torch.arange(first, first + 4) % 10, sampling, batch_generator("cpu", 0, first))
                for first in range(0, 12, 4)]
    pool = SamplerPool(lambda: make_sampler(model), 2, torch.device("cpu"))
    try:
        got = pool_batches(pool, model, 4, 3, sampling, torch.device("cpu"))
    finally:
        pool.close()
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, expected))

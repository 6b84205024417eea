"""scripts/bench_official.py's plumbing on the CPU. The official repository is not part of this project,
so a stand-in with its interface (models/arpg.py exposing ARPG_models; forward(ids, labels, targets) ->
(logits, loss); generate(labels, guidance_scale=..., num_iter=...)) wraps our tiny model."""
import functools
import sys
import textwrap

import pytest

from autoregressive import fast_generate
from autoregressive.models import arpg
from scripts import bench_official, official_code
from autoregressive.utils.cli import InputNotFound, UserError

STAND_IN = textwrap.dedent('''
    import torch
    from autoregressive.models.arpg import ARPG_models as OURS

    class Official(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = OURS["ARPG-tiny"]()
            self.config, self.head = self.inner.config, self.inner.head
            self.generate_calls = 0

        def forward(self, input_ids, condition, targets=None):
            return self.inner(input_ids, condition, targets=targets)

        @torch.inference_mode()
        def generate(self, condition, guidance_scale=4.0, cfg_schedule="linear", sample_schedule="arccos",
                     temperature=1.0, top_k=0, top_p=1, seq_len=256, num_iter=64):
            self.generate_calls += 1
            return self.inner.generate(condition, num_steps=num_iter, cfg_scale=guidance_scale,
                                       cfg_schedule=cfg_schedule, sample_schedule=sample_schedule)

    ARPG_models = {"ARPG-tiny": Official}
''')


def test_the_harness_times_both_sides_and_tabulates_ratios(tmp_path, capsys, monkeypatch):
    builds = []  # decoding steps (graphs, on a GPU) built by our samplers: once per cache kind, not per call

    class CountedSteps(fast_generate.GraphedSteps):
        def __init__(self, *args, **kwargs):
            builds.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(fast_generate, "GraphedSteps", CountedSteps)
    # both sides build ARPG-tiny from this table; a small vocabulary keeps the head's matmuls short
    monkeypatch.setitem(arpg.ARPG_models, "ARPG-tiny", functools.partial(arpg.ARPG_tiny, vocab_size=512))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "arpg.py").write_text(STAND_IN)
    bench_official.main(["--official-repo", str(tmp_path), "--device", "cpu", "--train-models", "ARPG-tiny",
                         "--train-batch", "2", "--steps", "1", "--reps", "2", "--no-compile", "--sample-models",
                         "ARPG-tiny", "--sample-batches", "2", "--step", "4", "--kv-caches", "weights,fp8",
                         "--profile", str(tmp_path / "profile")])
    out = capsys.readouterr().out
    # each training side says when it is compiled, before any timing: a run cut short shows how far it got
    assert [line.split(": compiled and warmed up in ")[0] for line in out.splitlines() if "warmed up" in line] == [
        "ARPG-tiny b2 official", "ARPG-tiny b2 ours"]
    rows = [line for line in out.splitlines() if line.startswith("| ARPG-tiny |")]
    sampling_sides = ["official", "ours, kv-cache weights", "ours, kv-cache fp8"]
    # training, then sampling, each as its size ends (kept if a time limit cuts the run short), then the
    # full tables
    assert [row.split(" | ")[2] for row in rows] == ["official", "ours", *sampling_sides] * 2
    assert rows[:5] == rows[5:]
    rows = rows[5:]
    assert all(row.split(" | ")[4].endswith("x") for row in rows)  # every row has its ratio to official
    assert rows[0].split(" | ")[4] == "1.00x" and rows[2].split(" | ")[4] == "1.00x"
    assert len(builds) == 2  # model and fp8, each kept over the warm-up and both repetitions
    assert rows[0].count("|") == 7 and all("% of " in row for row in rows[2:])  # sampling: share of the floor
    profiles = sorted(path.name for path in (tmp_path / "profile").iterdir())
    assert profiles == ["ARPG-tiny-b2-official.md", "ARPG-tiny-b2-ours-kv-cache-fp8.md",
                        "ARPG-tiny-b2-ours-kv-cache-weights.md"]
    text = (tmp_path / "profile" / profiles[1]).read_text()
    assert "| kind | ms per call |" in text and "per batch. Floor of the batch" in text


def test_a_folder_without_the_official_model_is_refused(tmp_path):
    with pytest.raises(InputNotFound, match="models/arpg.py"):
        official_code.load_official(str(tmp_path))


def test_a_missing_transformers_gets_a_stand_in_config_base(tmp_path, monkeypatch):
    # the official ModelArgs subclasses transformers' PretrainedConfig and nothing else of transformers
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "arpg.py").write_text(textwrap.dedent('''
        from transformers.configuration_utils import PretrainedConfig

        class ModelArgs(PretrainedConfig):
            def __init__(self, dim=8):
                self.dim = dim
    '''))
    monkeypatch.setitem(sys.modules, "transformers", None)  # None: "not installed" to the import system
    monkeypatch.setitem(sys.modules, "transformers.configuration_utils", None)
    official = official_code.load_official(str(tmp_path))
    assert official.ModelArgs(dim=3).dim == 3


def test_a_paths_peak_alone_counts_what_it_allocates_and_reserves_above_the_others_plus_its_weights(monkeypatch):
    """alone_peak_gib on a stand-in of the CUDA allocator: 10 GiB reserved (8 allocated) by the other paths
    before, peaks of 14 reserved and 10 allocated while the fresh path ran, 1 GiB of its own weights ->
    3 GiB allocated, 5 reserved."""
    import torch

    from scripts import bench_common

    gib, calls = 2**30, []
    fake = {"is_available": lambda: True, "synchronize": lambda: None, "empty_cache": lambda: calls.append("empty"),
            "reset_peak_memory_stats": lambda: calls.append("reset"), "memory_reserved": lambda: 10 * gib,
            "max_memory_reserved": lambda: 14 * gib, "memory_allocated": lambda: 8 * gib,
            "max_memory_allocated": lambda: 10 * gib}
    for name, function in fake.items():
        monkeypatch.setattr(torch.cuda, name, function)
    peak = bench_common.alone_peak_gib(lambda: calls.append("ran"), own_bytes=gib)
    assert (peak.allocated, peak.reserved) == (3.0, 5.0) and str(peak) == "3.00 / 5.00"
    assert calls == ["empty", "reset", "ran", "empty"]  # caches emptied and peaks reset before the path runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_common.alone_peak_gib(lambda: None, own_bytes=gib) is None

def test_one_at_a_time_builds_times_and_frees_each_training_side_in_turn(tmp_path, capsys, monkeypatch):
    """--one-at-a-time: each side is compiled, timed over every repetition and freed before the next is
    built (so sides that do not fit together still get their rows), in the interleaved order of sides."""
    from scripts import bench_train

    events = []
    real_time_steps = bench_train.time_steps
    monkeypatch.setattr(bench_train, "ready", lambda run, *a: events.append(("built", run.result["side"])) or run)
    monkeypatch.setattr(bench_train, "time_steps",
                        lambda run, *a: events.append(("timed", run.result["side"])) or real_time_steps(run, *a))
    monkeypatch.setattr(bench_train.gc, "collect", lambda: events.append(("freed", None)))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "arpg.py").write_text(STAND_IN)
    bench_official.main(["--official-repo", str(tmp_path), "--device", "cpu", "--train-models", "ARPG-tiny",
                         "--train-batch", "2", "--steps", "1", "--reps", "2", "--no-compile", "--sample-models",
                         "--one-at-a-time"])
    side = lambda name: [("built", name), ("timed", name), ("timed", name), ("freed", None)]
    assert events == side("official") + side("ours")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ARPG-tiny |")]
    assert [row.split(" | ")[2] for row in rows] == ["official", "ours"] * 2  # as each size ends, then in full


def test_an_opt_in_mlp_kernel_gets_its_own_training_side(tmp_path, capsys):
    """--mlp-kernels quack: a side "ours, quack MLP" beside the official code and ours, and one with each
    other policy asked for; where quack cannot run (here: no Hopper GPU) its row says why instead of the
    run stopping."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "arpg.py").write_text(STAND_IN)
    argv = ["--official-repo", str(tmp_path), "--device", "cpu", "--train-models", "ARPG-tiny", "--train-batch", "2",
            "--steps", "1", "--reps", "1", "--no-compile", "--sample-models"]
    bench_official.main(argv + ["--precision-policies", "exact,bf16", "--mlp-kernels", "quack"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ARPG-tiny |")]
    sides = [row.split(" | ")[2] for row in rows[:5]]
    assert sides[:3] == ["official", "ours", "ours, bf16"]
    assert sides[3].startswith("ours, quack MLP (not run: needs") and sides[4].startswith("ours, bf16, quack MLP (not run")
    with pytest.raises(UserError, match="--mlp-kernels: unknown liger"):
        bench_official.main(argv + ["--mlp-kernels", "liger"])

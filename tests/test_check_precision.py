"""scripts/check_precision.py and scripts/precision_check/: the synthetic prototype set, the pass rules on hand-made numbers, and one
small run of the whole check on the CPU (every policy and sampling mode in the tables)."""
import csv
import math
import statistics

import pytest
import torch
import torch.distributed as dist

from autoregressive.utils.dist import init_distributed
from scripts import check_precision as check
from scripts.precision_check import data, judge, measure, modes, parallel, run
from scripts.precision_check import report as files
from scripts.precision_check.data import PrototypeCodes


def test_samples_are_their_prototype_shifted_with_a_fraction_redrawn_and_reproducible():
    dataset = PrototypeCodes(num_classes=3, grid=16, vocab_size=1000, resample_fraction=0.25, num_samples=30, seed=1)
    assert all(len(set(prototype.tolist())) == 256 for prototype in dataset.prototypes)  # distinct codes
    codes, label = dataset[4]
    assert label == 1 and codes.shape == (256,) and codes.dtype == torch.long
    assert torch.equal(codes, dataset[4][0]) and not torch.equal(codes, dataset[7][0])  # same class, other draw
    agreement = dataset.agreement(codes[None], torch.tensor([1])).item()
    assert 0.65 < agreement < 0.85  # about 1 - 0.25, at the sample's own shift
    assert (codes == dataset.prototypes[1]).float().mean() < 0.2  # shifted: not at the prototype's places
    assert torch.equal(dataset.held_out(2)[0][0], dataset[30][0])
    labels = torch.tensor([0, 1, 2])
    shifted = dataset.prototypes.view(3, 16, 16).roll((5, 11), dims=(1, 2)).reshape(3, 256)
    assert dataset.match_share(shifted, labels) == 1.0
    assert dataset.match_share(dataset.prototypes.roll(1, dims=0), labels) == 0.0  # other classes' prototypes
    fixed = PrototypeCodes(num_classes=3, grid=16, vocab_size=1000, resample_fraction=0.25, num_samples=30, seed=1,
                           shift=False)
    assert (fixed[4][0] == fixed.prototypes[1]).float().mean() > 0.65  # in place
    assert fixed.match_share(fixed.prototypes, labels) == 1.0 and fixed.match_share(shifted, labels) == 0.0
    # V = 2, half redrawn: a token keeps its value with 3/4, flips with 1/4
    assert data.loss_floor(2, 0.5) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_the_plateau_is_the_class_code_frequency_entropy():
    # V = 4, 2 codes a class, half redrawn: each own code 1/4 + 1/8, each other code 1/8
    assert data.plateau_loss(4, 2, 0.5) == pytest.approx(-(2 * 0.375 * math.log(0.375) + 2 * 0.125 * math.log(0.125)))
    # where ARPG-L sat on the H100: 7.13 with one code per position, 5.1 with 4 x 4 blocks
    assert data.plateau_loss(16384, 256, 0.25) == pytest.approx(7.12, abs=0.01)
    assert data.plateau_loss(16384, 16, 0.25) == pytest.approx(5.07, abs=0.01)
    args = check.get_args_parser().parse_args([])
    assert data.learned_below(args) == pytest.approx((5.066 + 2.988) / 2, abs=0.01)


def test_prototypes_of_blocks():
    dataset = PrototypeCodes(num_classes=2, grid=16, vocab_size=100, resample_fraction=0.25, num_samples=10, seed=1,
                             regions=4)
    grids = dataset.prototypes.view(2, 16, 16)
    assert all(len(set(prototype.tolist())) == 16 for prototype in dataset.prototypes)  # 16 codes, distinct
    assert torch.equal(grids[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2), grids)  # 4 x 4 blocks
    codes, label = dataset[3]
    assert 0.65 < dataset.agreement(codes[None], torch.tensor([label])).item() < 0.85
    labels = torch.tensor([0, 1])
    assert dataset.match_share(grids.roll((5, 11), dims=(1, 2)).reshape(2, 256), labels) == 1.0
    assert dataset.match_share(dataset.prototypes.roll(1, dims=0), labels) == 0.0
    with pytest.raises(ValueError, match="does not divide"):
        PrototypeCodes(2, 16, 100, 0.25, 10, 1, regions=5)


def test_pass_rules_on_hand_made_numbers():
    assert judge.within_noise(0.90, 0.90, 100) and judge.within_noise(0.85, 0.90, 100)  # 2 sigma = 0.087 + 0.01
    assert not judge.within_noise(0.70, 0.90, 100)
    assert judge.within_noise(1.0, 1.0, 10) and judge.within_noise(0.9, 1.0, 10) and not judge.within_noise(0.4, 1.0, 10)
    # training: |loss - exact| <= 2 x run-to-run, and a share within noise
    assert judge.policy_passes(2.09, 2.00, 0.05, 0.9, 0.9, 100)
    assert not judge.policy_passes(2.11, 2.00, 0.05, 0.9, 0.9, 100)
    assert not judge.policy_passes(2.00, 2.00, 0.05, 0.5, 0.9, 100)
    # sampling: KL and top-1 disagreement within 2x the yardstick's, and a share within noise
    assert judge.mode_passes(0.0019, 0.981, 0.9, yardstick_kl=0.001, yardstick_top1=0.99, reference_share=0.9, count=100)
    assert not judge.mode_passes(0.0021, 0.98, 0.9, 0.001, 0.99, 0.9, 100)
    assert not judge.mode_passes(0.001, 0.97, 0.9, 0.001, 0.99, 0.9, 100)  # 3% disagreement > 2 x 1%
    assert not judge.mode_passes(0.001, 0.99, 0.6, 0.001, 0.99, 0.9, 100)


def test_judging_fills_every_row():
    rows = [{"run": "exact", "held-out loss": 2.0, "match share": 0.9},
            {"run": "exact, next seed", "held-out loss": 2.05, "match share": 0.9},
            {"run": "bf16", "held-out loss": 2.08, "match share": 0.88},
            {"run": "bf16-bad", "held-out loss": 2.2, "match share": 0.9},
            {"run": "fp8", "pass": "not run: no GPU"}]
    judge.judge_policies(rows, count=100, learned_below=3.0)
    assert [row["pass"] for row in rows] == ["reference", "run-to-run difference", "yes", "no", "not run: no GPU"]
    assert rows[2]["vs exact"] == pytest.approx(0.08) and list(rows[2])[-1] == "pass"
    assert [row.get("learned") for row in rows] == ["yes", "yes", "yes", "yes", None]
    # a policy that stayed on the plateau fails; an exact run that did leaves nothing to judge against
    rows = [{"run": "exact", "held-out loss": 2.0, "match share": 0.9},
            {"run": "exact, next seed", "held-out loss": 2.05, "match share": 0.9},
            {"run": "bf16", "held-out loss": 5.1, "match share": 0.0}]
    judge.judge_policies(rows, count=100, learned_below=3.0)
    assert rows[2]["pass"] == "no: did not learn the set"
    rows = [{"run": "exact", "held-out loss": 5.128, "match share": 0.0},  # the H100 run of 2026-11-28
            {"run": "exact, next seed", "held-out loss": 3.621, "match share": 0.77},
            {"run": "bf16", "held-out loss": 4.297, "match share": 0.43}]
    judge.judge_policies(rows, count=160, learned_below=4.03)
    assert rows[2]["pass"] == "inconclusive: exact did not learn the set"
    assert [row["learned"] for row in rows] == ["no", "yes", "no"]
    mode_rows = [{"mode": "float32", "KL vs float32": 0.0, "top-1 agreement": 1.0, "match share": 0.9},
             {"mode": "bf16-autocast", "KL vs float32": 0.001, "top-1 agreement": 0.99, "match share": 0.9},
             {"mode": "bf16", "KL vs float32": 0.003, "top-1 agreement": 0.99, "match share": 0.9}]
    mode_rows.append({"mode": "fp8-kv", "KL vs float32": 0.005, "top-1 agreement": 0.985, "match share": 0.9})
    judge.judge_modes(mode_rows, count=100)
    assert [row["pass"] for row in mode_rows] == ["reference", "yes", "no", "yes"]  # fp8-kv: within 2x of bf16's
    assert [row.get("yardstick") for row in mode_rows] == [None, "bf16-autocast", "bf16-autocast", "bf16"]
    assert modes.parse_modes("fp16") == ["float32", "bf16-autocast", "fp16"]
    assert modes.parse_modes("fp8-kv") == ["float32", "bf16-autocast", "bf16", "fp8-kv"]  # its yardstick first
    assert modes.parse_modes("bf16-fused") == modes.parse_modes("bf16-compiled-layers")  # the old name, with a note
    with pytest.raises(ValueError, match="unknown sampling mode fp4"):
        modes.parse_modes("fp4")


def test_next_token_distributions_are_read_through_the_kv_cache():
    """One token a step: the cached decoding of the true tokens is teacher forcing (the forward pass).
    Several a step: the tokens of a step see each other, as in sampling, so the figures move a little.
    The int8-kv and fp8-kv modes read a quantised cache (bf16 weights): close to the bf16 mode's
    distributions, not equal, int8's (127 levels a side) closer than e4m3's (3 mantissa bits)."""
    from conftest import build_tiny

    model = build_tiny().float()
    generator = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 32, (6, 16), generator=generator), torch.arange(6) % 5
    orders = torch.rand(6, 16, generator=generator).argsort(1)
    float32 = modes.SAMPLING_MODES["float32"]
    cached = measure.next_token_log_probs(model, float32, codes, labels, orders, num_steps=16)
    with torch.no_grad():
        forward = torch.log_softmax(model(codes, labels, orders=orders)[0], dim=-1)
    assert cached.shape == (6, 16, 32) and torch.allclose(cached, forward, atol=1e-5)
    parallel = measure.next_token_log_probs(model, float32, codes, labels, orders, num_steps=4)
    assert 0 < measure.compare_to_reference(cached, parallel)[0] < 0.5
    figures = {}
    for name in ("bf16", "int8-kv", "fp8-kv"):
        mode = modes.SAMPLING_MODES[name]
        figures[name] = measure.next_token_log_probs(mode.prepare(build_tiny().float()), mode, codes, labels, orders, 16)
    kl, top1 = measure.compare_to_reference(figures["bf16"], figures["fp8-kv"])
    assert 0 < kl < 0.05 and top1 >= 0.9
    kl_int8, top1_int8 = measure.compare_to_reference(figures["bf16"], figures["int8-kv"])
    assert 0 < kl_int8 < kl / 4 and top1_int8 >= top1


def test_the_compiled_layers_mode_runs_the_compiled_layer_parts():
    """bf16-compiled-layers reads its distributions through the layers' compiled parts (a counting backend here, which
    runs them as traced: the figures equal the bf16 mode's to rounding)."""
    from conftest import build_tiny

    from autoregressive.fast_generate import compiled_layer_parts

    compiled = []

    def counting_backend(graph_module, example_inputs):
        compiled.append(graph_module)
        return graph_module.forward

    generator = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 32, (4, 16), generator=generator), torch.arange(4) % 5
    orders = torch.rand(4, 16, generator=generator).argsort(1)
    figures = {}
    for name in ("bf16", "bf16-compiled-layers"):
        mode = modes.SAMPLING_MODES[name]
        model = mode.prepare(build_tiny().float())
        parts = compiled_layer_parts(model, counting_backend) if mode.compile_layers else None
        figures[name] = measure.next_token_log_probs(model, mode, codes, labels, orders, 4, parts)
    torch._dynamo.reset()
    assert compiled  # the compiled-layers mode went through torch.compile
    kl, top1 = measure.compare_to_reference(figures["bf16"], figures["bf16-compiled-layers"])
    assert kl < 1e-3 and top1 >= 0.95


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_more_exact_seeds_make_the_yardstick_their_spread():
    """--exact-seeds N: the run-to-run difference is sqrt(2) x the standard deviation of the N exact runs'
    held-out losses, which for two runs is their difference."""
    two = [{"run": "exact", "held-out loss": 2.0}, {"run": "exact, next seed", "held-out loss": 2.05}]
    assert judge.run_to_run(two, 2) == pytest.approx(0.05)
    losses = [2.0, 2.05, 1.97, 2.02]
    spread = math.sqrt(2) * statistics.stdev(losses)  # 0.0476
    rows = [{"run": name, "held-out loss": loss, "match share": 0.9}
            for name, loss in zip(["exact", "exact, next seed", "exact, seed +2", "exact, seed +3"], losses)]
    rows += [{"run": "inside", "held-out loss": 2.0 + 1.95 * spread, "match share": 0.9},
             {"run": "outside", "held-out loss": 2.0 + 2.05 * spread, "match share": 0.9}]
    assert judge.run_to_run(rows, 4) == pytest.approx(spread)
    judge.judge_policies(rows, count=100, learned_below=3.0, exact_runs=4)
    assert [row["pass"] for row in rows] == ["reference"] + ["run-to-run difference"] * 3 + ["yes", "no"]
    # judged against the first difference alone, "outside" would pass: 2.05 x 0.0476 < 2 x 0.05
    assert judge.policy_passes(rows[5]["held-out loss"], 2.0, 0.05, 0.9, 0.9, 100)
    # an exact run that did not finish leaves nothing to judge against
    rows = [{**row} for row in rows[:4]] + [{"run": "bf16", "held-out loss": 2.01, "match share": 0.9}]
    del rows[3]["held-out loss"]
    rows[3]["pass"] = "failed: its process exited with code 1 (its output is above)"
    assert judge.run_to_run(rows, 4) is None
    judge.judge_policies(rows, count=100, learned_below=3.0, exact_runs=4)
    assert rows[4]["pass"] == "inconclusive: exact, seed +3 did not finish"
    args = check.get_args_parser().parse_args(["--precision-policies", "exact,bf16", "--exact-seeds", "4",
                                               "--global-seed", "5"])
    assert [(r.name, r.seed) for r in run.planned_runs(args)] == [
        ("exact", 5), ("exact, next seed", 6), ("exact, seed +2", 7), ("exact, seed +3", 8), ("bf16", 5)]


def test_a_small_check_learns_the_set_and_reports_every_policy_and_mode(tmp_path, one_process_group):
    """ARPG-digits: learned absolute positions, so fixed prototypes (the tiny relative-only models learn the
    shifted grids too slowly for a test)."""
    args = check.get_args_parser().parse_args(
        ["--gpt-model", "ARPG-digits", "--vocab-size", "32", "--num-classes", "5", "--grid", "4", "--steps", "40",
         "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "4", "--eval-batch", "16", "--samples-per-class", "4",
         "--sample-batch", "20", "--num-steps", "4", "--device", "cpu", "--compile-layers-backend", "eager",
         "--out-dir", str(tmp_path / "out")])
    check.check_args(args)
    training, sampling, curves = run.run_check(args, init_distributed("cpu"))
    assert [row["run"] for row in training] == ["exact", "exact, next seed", "bf16", "fp8", "fp8-rowwise"]
    assert [row["mode"] for row in sampling] == list(modes.SAMPLING_MODES)
    exact = curves["exact"]
    assert sum(exact[-10:]) / 10 < sum(exact[:10]) / 10 - 1.0  # the set is learnable
    assert training[0]["held-out loss"] < math.log(32) - 1.0 and training[0]["match share"] >= 0.5
    assert training[2]["pass"] in ("yes", "no") and training[3]["pass"].startswith("not run")
    assert sampling[0]["KL vs float32"] == 0.0 and sampling[0]["top-1 agreement"] == 1.0
    assert sampling[1]["KL vs float32"] > 0  # bf16 autocast moves the distributions a little
    assert all(row["pass"] in ("reference", "yes", "no") for row in sampling)

    files.report(args, training, sampling, curves)
    out = tmp_path / "out"
    assert {path.name for path in out.iterdir()} == {"report.md", "training.csv", "sampling.csv", "losses.png",
                                                     "finished"}
    with open(out / "sampling.csv") as file:
        assert [row["mode"] for row in csv.DictReader(file)] == list(modes.SAMPLING_MODES)
    report_text = (out / "report.md").read_text()
    assert "| bf16 | 0 |" in report_text
    yardstick = abs(training[1]["held-out loss"] - training[0]["held-out loss"])
    assert f"Run-to-run difference: {yardstick:.4g} (sqrt(2) x the standard deviation of the 2 exact runs'" in report_text


def test_training_alone_when_sampling_modes_is_none(tmp_path, one_process_group):
    """--sampling-modes none: the training runs and their table only (a device call too short for both
    runs the two halves apart)."""
    assert modes.parse_modes("none") == []
    args = check.get_args_parser().parse_args(
        ["--gpt-model", "ARPG-digits", "--vocab-size", "32", "--num-classes", "5", "--grid", "4", "--steps", "10",
         "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--eval-batch", "8", "--samples-per-class", "2",
         "--sample-batch", "10", "--num-steps", "4", "--device", "cpu", "--precision-policies", "exact",
         "--mlp-kernels", "quack", "--sampling-modes", "none", "--out-dir", str(tmp_path / "out")])
    training, sampling, curves = run.run_check(args, init_distributed("cpu"))
    assert [row["run"] for row in training] == ["exact", "exact, next seed", "exact + quack MLP"] and sampling == []
    assert training[2]["pass"].startswith("not run: needs")  # quack: a package and a CUDA GPU
    files.report(args, training, sampling, curves)
    out = tmp_path / "out"
    assert {path.name for path in out.iterdir()} == {"report.md", "training.csv", "losses.png", "finished"}
    assert "Sampling" not in (out / "report.md").read_text()


def test_parallel_runs_give_the_tables_of_one_process(tmp_path, one_process_group):
    """--parallel 2: each training run in a process of its own (sharing the CPU here, a GPU each on a
    GPU machine), the exact one's also sampling; the parent's tables equal those of one process."""
    argv = ["--gpt-model", "ARPG-digits", "--vocab-size", "32", "--num-classes", "5", "--grid", "4", "--steps", "12",
            "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--eval-batch", "8", "--samples-per-class", "2",
            "--sample-batch", "10", "--num-steps", "4", "--device", "cpu", "--precision-policies", "exact,bf16",
            "--sampling-modes", "bf16", "--out-dir", str(tmp_path / "parallel")]
    check.main(argv + ["--parallel", "2"])
    with open(tmp_path / "parallel" / "training.csv") as file:
        parallel_training = list(csv.DictReader(file))
    with open(tmp_path / "parallel" / "sampling.csv") as file:
        parallel_sampling = list(csv.DictReader(file))
    training, sampling, _ = run.run_check(check.get_args_parser().parse_args(argv), init_distributed("cpu"))
    assert [row["run"] for row in parallel_training] == ["exact", "exact, next seed", "bf16"]
    for mine, theirs in zip(parallel_training, training):
        assert float(mine["held-out loss"]) == pytest.approx(theirs["held-out loss"], abs=1e-4)
        assert mine["pass"] == theirs["pass"]
    assert [row["mode"] for row in parallel_sampling] == [row["mode"] for row in sampling]
    for mine, theirs in zip(parallel_sampling, sampling):
        assert float(mine["KL vs float32"]) == pytest.approx(theirs["KL vs float32"], rel=1e-2, abs=1e-7)


def test_parallel_children_take_the_parents_visible_gpus():
    assert parallel.child_gpus(2, {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert parallel.child_gpus(2, {"CUDA_VISIBLE_DEVICES": "5, 1,7"}) == ["5", "1"]
    assert parallel.child_gpus(3, {}) == ["0", "1", "2"]


def test_a_failed_exact_run_leaves_the_policies_inconclusive():
    rows = [{"run": "exact", "seed": 0, "pass": "failed: its process exited with code 1 (its output is above)"},
            {"run": "exact, next seed", "held-out loss": 2.05, "match share": 0.9},
            {"run": "bf16", "held-out loss": 2.08, "match share": 0.88}]
    judge.judge_policies(rows, count=100, learned_below=3.0)
    assert rows[0]["pass"].startswith("failed") and rows[2]["pass"] == "inconclusive: exact did not finish"


def test_an_mlp_kernel_joins_every_policy_train_c2i_lets_it_join():
    """--mlp-kernels quack: a run beside exact and beside bf16, none beside fp8 (train_c2i.py refuses
    quack with a float8 policy), each named after both."""
    args = check.get_args_parser().parse_args(["--precision-policies", "fp8,bf16", "--mlp-kernels", "quack"])
    assert [(r.name, r.policy, r.mlp_kernel) for r in run.planned_runs(args)] == [
        ("exact", "exact", "torch"), ("exact, next seed", "exact", "torch"), ("fp8", "fp8", "torch"),
        ("bf16", "bf16", "torch"), ("exact + quack MLP", "exact", "quack"), ("bf16 + quack MLP", "bf16", "quack")]


def test_bad_arguments_are_refused():
    parse = lambda *extra: check.get_args_parser().parse_args(list(extra))
    with pytest.raises(ValueError, match="resample-fraction"):
        check.check_args(parse("--resample-fraction", "1.5"))
    with pytest.raises(ValueError, match="--vocab-size 100 is smaller than the 256 distinct codes"):
        check.check_args(parse("--vocab-size", "100", "--regions", "16"))
    with pytest.raises(ValueError, match="--regions 5 does not divide --grid 16"):
        check.check_args(parse("--regions", "5"))
    with pytest.raises(ValueError, match="--warmup-steps 40 is more than --steps 30"):
        check.check_args(parse("--steps", "30", "--warmup-steps", "40"))
    with pytest.raises(ValueError, match="--exact-seeds"):
        check.check_args(parse("--exact-seeds", "1"))


def test_resume_reads_the_runs_a_check_finished_under_the_same_settings(tmp_path, one_process_group, monkeypatch):
    """Each run is saved as it ends; --resume reads the ones saved under the same settings (a check cut short
    goes on where it stopped), trains the others, and trains exact again when the sampling modes need it."""
    argv = ["--gpt-model", "ARPG-digits", "--vocab-size", "32", "--num-classes", "5", "--grid", "4", "--steps", "6",
            "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--eval-batch", "8", "--samples-per-class", "2",
            "--sample-batch", "10", "--num-steps", "4", "--device", "cpu", "--precision-policies", "exact",
            "--sampling-modes", "none", "--out-dir", str(tmp_path / "out")]
    parse = lambda *extra: check.get_args_parser().parse_args(argv + list(extra))
    first, _, first_curves = run.run_check(parse(), init_distributed("cpu"))
    assert sorted(p.name for p in (tmp_path / "out" / "finished").iterdir()) == ["exact-next-seed.json", "exact.json"]

    trained = []
    real = run.train_policy
    monkeypatch.setattr(run, "train_policy", lambda cfg, *rest: trained.append(cfg.global_seed) or real(cfg, *rest))
    again, _, curves = run.run_check(parse("--resume"), init_distributed("cpu"))
    assert trained == [] and again == first and curves == first_curves  # both read back
    run.run_check(parse("--resume", "--lr", "1e-3"), init_distributed("cpu"))
    assert trained == [0, 1]  # other settings: both trained again
    trained.clear()
    run.run_check(parse("--resume", "--lr", "1e-3", "--sampling-modes", "bf16"), init_distributed("cpu"))
    assert trained == [0]  # exact again, for the sampling modes' weights; the next seed read
    trained.clear()
    more, _, _ = run.run_check(parse("--resume", "--lr", "1e-3", "--exact-seeds", "3"), init_distributed("cpu"))
    assert trained == [2] and [row["run"] for row in more] == ["exact", "exact, next seed", "exact, seed +2"]

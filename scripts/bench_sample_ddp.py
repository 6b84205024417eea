"""End to end, as users run it: the official sample_c2i_ddp.py against ours, launch to finished .npz, on
one GPU with the same random weights and flags, split into stages.

    python -m scripts.bench_sample_ddp --official-repo /tmp/ARPG-official --num-images 10000 \\
        --official-images 10000 --batches 32 250 --no-png-batches 250

Both scripts run under torchrun --nproc_per_node=1 with the official README's flags (--gpt-model ARPG-L
--cfg-scale 5.0 --step 64 --sample-schedule arccos) on one random ARPG-L checkpoint in the official
layout and one random VQ-16 checkpoint (written first into --work-dir). The official script runs from its
own tree through scripts/time_official_sample.py (its stages timed), ours with --timings and
--concurrent-batches (default: sample_c2i_ddp.py's). Columns:
start-up = launch until the first batch's tokens are sampled, split into loading (imports, CUDA,
checkpoints: until the first sampling starts; its steps are printed after the tables) and first
batches (ours: every sampler's first batch, which captures its graphs; the official: its first batch);
our VQ decoder compiles after that, on its own thread beside the next batches; model, VQ decoding and
encoding+writing = seconds busy over the whole run (ours overlaps them: the VQ decoder of a batch runs
beside the sampling of the next, the writers on threads, so they add up to more than the wall time;
writing is summed over the writer threads; our VQ time is GPU time, without its compilation); packing =
the .npz. Steady img/s: images over time in the second half of the batches as their files reach the
disk (the official script: its images after the first batch, over the time to its last PNG). After the
runs, this process measures our parts warm at each batch (a second table): the sampler alone ("model
only", with the runs' count of batches at once), the VQ decoder alone, and both together as
sample_c2i_ddp.py --no-png runs them. The 50,000-image column projects each run: its own time to the last
file (start-up and every cold compilation as measured), the images it did not make at the steady rate
(capped at both together's: faster is a backlog draining), and packing scaled by the image count.

--our-flags adds sample_c2i_ddp.py flags to our runs (an opt-in such as "--vq-precision fp16"); the rows
name them.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np
import torch

from autoregressive.image_output import DecoderThread, ImageWriter, StageClock, default_workers, render_function
from autoregressive.sampler_pool import default_concurrent_batches
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.dist import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_FLAGS = ["--gpt-model", "ARPG-L", "--cfg-scale", "5.0", "--step", "64", "--sample-schedule", "arccos"]
PROJECTED = 50000
# What the benchmark sets on our runs itself; --our-flags may not set them again.
SET_BY_THE_BENCHMARK = ("--gpt-model", "--cfg-scale", "--step", "--sample-schedule", "--gpt-ckpt", "--vq-ckpt",
                        "--num-fid-samples", "--sample-dir", "--per-proc-batch-size", "--concurrent-batches",
                        "--timings", "--no-png")


def random_checkpoints(work_dir: str, official_repo: str):
    """A random ARPG-L in the official layout (head drawn, not zero) and a random VQ-16, as files."""
    from scripts.official_code import load_official
    from tokenizer.vq_model import VQ_models

    gpt, vq = os.path.join(work_dir, "arpg_l_random.pt"), os.path.join(work_dir, "vq_random.pt")
    torch.manual_seed(0)
    model = load_official(official_repo).ARPG_models["ARPG-L"]()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    torch.save({"model": model.state_dict()}, gpt)
    torch.save({"model": VQ_models["VQ-16"]().state_dict()}, vq)
    return gpt, vq


def launch(script: str, flags: List[str], times: str, env: dict, cwd: str) -> float:
    """torchrun one process of script; returns the wall seconds from launch to exit."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
               script, *flags]
    start = time.time()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with open(times) as file:
        record = json.load(file)
    record["launch_wall"] = start
    return wall, record


def row(name: str, batch: int, images: int, wall: float, record: dict) -> dict:
    seconds, marks = record["seconds"], record["marks"]
    startup = marks["first_batch_sampled"] - record["launch_wall"]
    loading = marks["loaded"] - record["launch_wall"] if "loaded" in marks else None
    steady = steady_rate(record.get("written")) or (images - batch) / max(marks["sampled"] - marks["first_batch_sampled"],
                                                                          1e-9)
    return {"run": name, "batch": batch, "images": images, "wall": wall, "startup": startup, "loading": loading,
            "model": seconds.get("model", 0.0), "vq": seconds.get("vq_decode", 0.0),
            "write": seconds.get("write", 0.0), "pack": seconds.get("pack", 0.0), "steady": steady,
            "loading_steps": loading_steps(record)}


# The steps of loading, as the scripts mark them: (mark, what ends with it); the official script has no
# "distributed" mark (its process group comes with its loading).
LOADING_STEPS = (("imported", "torchrun, Python and imports"), ("distributed", "process group"),
                 ("loaded", "checkpoints onto the GPU"))


def loading_steps(record: dict) -> str:
    """Loading split at the marks of LOADING_STEPS the run made: "torchrun, Python and imports 3.0 s, ..."."""
    marks, previous, parts = record["marks"], record["launch_wall"], []
    for mark, what in LOADING_STEPS:
        if mark in marks:
            parts.append(f"{what} {marks[mark] - previous:.1f} s")
            previous = marks[mark]
    return ", ".join(parts)


def projected(r: dict, cap: Optional[float] = None) -> float:
    """Seconds for PROJECTED images: the run's own time to its last file (wall less packing), which holds
    its start-up and any compilation that held files back (the VQ decoder's, for a new batch size), then
    the images it did not make at the steady rate, then packing scaled by the count. The steady rate is
    capped at `cap`, the rate at which the sampler and the VQ decoder make whole images together on this
    GPU (InProcess.both): files reach the disk faster than that only while a backlog drains (the
    decoder's, queued behind its compilation), not for long."""
    rate = min(r["steady"], cap) if cap else r["steady"]
    return r["wall"] - r["pack"] + max(PROJECTED - r["images"], 0) / rate + r["pack"] * PROJECTED / r["images"]


def steady_rate(written: Optional[List[List[float]]]) -> Optional[float]:
    """Images per second over the second half of the batches as they reached the disk ([time, samples]
    per batch, in time order): past the start-up and the VQ compilation."""
    if not written or len(written) < 4:
        return None
    half = written[len(written) // 2:]
    return sum(samples for _, samples in half[1:]) / max(half[-1][0] - half[0][0], 1e-9)


class InProcess(NamedTuple):
    """img/s of our pipeline's parts in one process, warm (no compilation, no start-up)."""
    model: float  # the sampler alone, its batches at once
    vq: float  # the VQ decoder alone on the same tokens
    both: float  # the two together as sample_c2i_ddp.py --no-png runs them: the GPU's rate for whole images


def pipeline_rates(model, vq, pool, batch: int, sampling, device, reps: int = 3) -> InProcess:
    """Medians of reps after a warm-up, repetitions interleaved: 4 x pool.size batches through the sampler
    pool alone, through the VQ decoder alone (vq None: the grey-level rendering of the digits models), and
    through both as sample_c2i_ddp.py runs them (the decoder on its thread and CUDA stream beside the
    sampling, writer threads saving one .npy per batch into a temporary folder)."""
    from scripts.bench_common import pool_batches, timed

    batches = 4 * pool.size
    render = render_function(model.config.grid_size, vq, model.config.vocab_size, None)
    sample = lambda each=None: pool_batches(pool, model, batch, batches, sampling, device, each)

    def decode(tokens: list) -> None:
        for batch_tokens in tokens:
            render(batch_tokens)[0].cpu()

    def both() -> None:
        with tempfile.TemporaryDirectory() as folder:
            clock = StageClock()
            writer = ImageWriter(folder, False, None, clock, default_workers(1))
            decoder = DecoderThread(render, writer, clock)
            try:
                sample(lambda first, tokens: decoder.put(first, batch, tokens))
            finally:
                decoder.close()
                writer.close()

    tokens = sample()  # the warm-up: each worker captures its graphs, the decoder compiles for this batch
    decode(tokens)
    both()
    seconds = {"model": [], "vq": [], "both": []}
    for _ in range(reps):
        seconds["model"].append(timed(sample)[1])
        seconds["vq"].append(timed(lambda: decode(tokens))[1])
        seconds["both"].append(timed(both)[1])
    return InProcess(**{part: batches * batch / float(np.median(times)) for part, times in seconds.items()})


def our_options(our_flags: List[str]) -> argparse.Namespace:
    """sample_c2i_ddp.py's options with --our-flags set: what our runs sample and decode with."""
    from sample_c2i_ddp import get_args_parser as ours
    return ours().parse_known_args(our_flags)[0]


def in_process_rates(batch: int, concurrent: int, device, vq_ckpt: str, our_flags: List[str]) -> InProcess:
    """pipeline_rates for a random bf16 ARPG-L with the flags above, `concurrent` batches at once, the
    sampler and the VQ-16 of vq_ckpt as our runs use them (--compile, --compile-layers, --vq-precision and
    --compile-vq from --our-flags)."""
    from autoregressive.fast_generate import make_sampler
    from autoregressive.sampler_pool import SamplerPool
    from autoregressive.sampling import SamplingConfig
    from autoregressive.weights import PRECISIONS, load_vq
    from scripts.bench_common import random_model

    flags = our_options(our_flags)
    model = random_model("ARPG-L", device)
    vq = load_vq("VQ-16", vq_ckpt, device, PRECISIONS[flags.vq_precision], compile_decoder=flags.compile_vq)
    pool = SamplerPool(lambda: make_sampler(model, use_fast=flags.compile, compile_layers=flags.compile_layers),
                       concurrent, device)
    try:
        return pipeline_rates(model, vq, pool, batch, SamplingConfig(num_steps=64, cfg_scale=5.0,
                                                                     sample_schedule="arccos"), device)
    finally:
        pool.close()


def table(rows: List[dict], official: Optional[dict], rates: Dict[int, InProcess]) -> List[str]:
    lines = ["| run | batch | images | wall s | start-up s (loading + first batches) | model s | VQ decoding s | "
             "encoding+writing s | packing s | steady img/s | steady / model only | end to end img/s | "
             "50k projected s | x official (50k) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = rates.get(r["batch"]) if r["run"] != "official" else None
        share = f"{100 * r['steady'] / rate.model:.0f}% of {rate.model:.0f}" if rate else "-"
        cap = rate.both if rate else None
        ratio = f"{projected(official) / projected(r, cap):.1f}x" if official else "-"
        startup = f"{r['startup']:.1f}"
        if r.get("loading") is not None:
            startup += f" ({r['loading']:.1f} + {r['startup'] - r['loading']:.1f})"
        lines.append(f"| {r['run']} | {r['batch']} | {r['images']} | {r['wall']:.1f} | {startup} | "
                     f"{r['model']:.1f} | {r['vq']:.1f} | {r['write']:.1f} | {r['pack']:.1f} | {r['steady']:.1f} | "
                     f"{share} | {r['images'] / r['wall']:.1f} | {projected(r, cap):.0f} | {ratio} |")
    return lines


def rates_table(rates: Dict[int, InProcess], concurrent: Callable[[int], int]) -> List[str]:
    lines = ["| batch | batches at once | model only img/s | VQ decoder only img/s | both together img/s | "
             "together / model only |", "|---|---|---|---|---|---|"]
    for batch, rate in sorted(rates.items()):
        lines.append(f"| {batch} | {concurrent(batch)} | {rate.model:.1f} | {rate.vq:.1f} | {rate.both:.1f} | "
                     f"{100 * rate.both / rate.model:.0f}% |")
    return lines


def compare_samples(images, labels, other_images, other_labels) -> str:
    """Whether two runs' samples are the same, and if not, by how much (NHWC uint8 arrays)."""
    if images.shape != other_images.shape or not np.array_equal(labels, other_labels):
        return f"DIFFERENT samples ({images.shape[0]} and {other_images.shape[0]} images, or other labels)"
    from scripts.bench_common import pixel_difference

    levels, share = pixel_difference(images, other_images)
    if not levels:
        return "equal"
    images_differing = (images != other_images).any(axis=(1, 2, 3)).sum()
    return (f"DIFFERENT pixels: {images_differing} of {len(images)} images, {100 * share:.3f}% of values, "
            f"at most {levels} levels")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="a copy of https://github.com/hp-l33/ARPG")
    parser.add_argument("--skip-official", action="store_true", help="our runs only (the copy still gives the "
                        "checkpoint layout)")
    parser.add_argument("--num-images", type=int, default=10000, help="images of each of our runs")
    parser.add_argument("--official-images", type=int, default=10000, help="images of the official run")
    parser.add_argument("--batches", nargs="*", type=int, default=[32, 250], help="our runs with PNGs")
    parser.add_argument("--no-png-batches", nargs="*", type=int, default=[250], help="our runs with --no-png")
    parser.add_argument("--concurrent-batches", type=int, default=None,
                        help="our runs' --concurrent-batches (default: sample_c2i_ddp.py's)")
    parser.add_argument("--our-flags", default="", help="more sample_c2i_ddp.py flags for our runs, as one string "
                        "(e.g. \"--vq-precision fp16\"); the in-process rates take their sampler and VQ flags "
                        "too")
    parser.add_argument("--work-dir", default="bench_sample_ddp", help="checkpoints and samples (emptied first)")
    parser.add_argument("--keep-samples", action="store_true", help="leave the sample folders in --work-dir")
    return parser


def parse_our_flags(text: str) -> List[str]:
    """--our-flags split as a shell would, refused where sample_c2i_ddp.py does not know a flag or the
    benchmark sets it itself."""
    flags = shlex.split(text)
    names = [flag.split("=")[0] for flag in flags if flag.startswith("--")]
    taken = [name for name in names if name in SET_BY_THE_BENCHMARK]
    if taken:
        raise UserError(f"--our-flags: {', '.join(taken)} is set by the benchmark itself; use its own flags instead")
    from sample_c2i_ddp import get_args_parser as ours

    parser = ours()
    parser.exit_on_error = False  # a bad value raises here instead of exiting with the usage text
    try:
        _, unknown = parser.parse_known_args(flags)
    except argparse.ArgumentError as error:
        raise UserError(f"--our-flags: {error}") from None
    if unknown:
        raise UserError(f"--our-flags: sample_c2i_ddp.py does not take {' '.join(unknown)}; see its --help")
    return flags


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    our_flags = parse_our_flags(args.our_flags)
    check_at_least("--num-images", args.num_images, 1)
    check_at_least("--concurrent-batches", args.concurrent_batches, 1)
    concurrent = lambda batch: args.concurrent_batches or default_concurrent_batches(batch)
    if args.official_images % 1000:
        raise UserError("--official-images must be a multiple of 1000: the official script samples every class "
                        "equally often")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir)
    work = os.path.abspath(args.work_dir)
    gpt, vq = random_checkpoints(work, args.official_repo)
    common = [*OFFICIAL_FLAGS, "--gpt-ckpt", gpt, "--vq-ckpt", vq]
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    rows, official = [], None
    if not args.skip_official:
        times = os.path.join(work, "official.json")
        repo = os.path.abspath(args.official_repo)
        flags = [*common, "--num-fid-samples", str(args.official_images), "--sample-dir", os.path.join(work, "official")]
        try:
            wall, record = launch(os.path.join(ROOT, "scripts", "time_official_sample.py"), flags, times,
                                  {**env, "ARPG_OFFICIAL_REPO": repo, "ARPG_STAGE_TIMES": times}, repo)
            official = row("official", 32, args.official_images, wall, record)
            rows.append(official)
            print("\n".join(table(rows, official, {})), flush=True)
        except RuntimeError as error:
            print(error, flush=True)
    # Without PNGs first: a size's first run compiles the VQ decoder cold, the PNG run after it finds it cached.
    runs = [(batch, False) for batch in args.no_png_batches] + [(batch, True) for batch in args.batches]
    npz = {}
    for batch, pngs in runs:
        at_once = concurrent(batch)
        name = ("ours" if pngs else "ours --no-png") + (f", {at_once} at once" if at_once > 1 else "")
        name += f", {' '.join(our_flags)}" if our_flags else ""
        times = os.path.join(work, f"ours-{batch}-{pngs}.json")
        out = os.path.join(work, f"ours-{batch}-{'png' if pngs else 'npy'}")
        flags = [*common, "--num-fid-samples", str(args.num_images), "--sample-dir", out,
                 "--per-proc-batch-size", str(batch), "--concurrent-batches", str(at_once), "--timings", times,
                 *([] if pngs else ["--no-png"]), *our_flags]
        try:
            wall, record = launch(os.path.join(ROOT, "sample_c2i_ddp.py"), flags, times, env, ROOT)
        except RuntimeError as error:  # the other runs still give their rows
            print(error, flush=True)
            continue
        rows.append(row(name, batch, args.num_images, wall, record))
        npz[(batch, pngs)] = next(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".npz"))
        print("\n".join(table(rows, official, {})), flush=True)
    for batch in {b for b, _ in runs}:  # the same samples whichever way they were stored
        if (batch, True) in npz and (batch, False) in npz:
            with np.load(npz[(batch, True)]) as a, np.load(npz[(batch, False)]) as b:
                print(f"batch {batch}: the --no-png .npz against the PNG run's: "
                      f"{compare_samples(a['arr_0'], a['labels'], b['arr_0'], b['labels'])}", flush=True)
    device = torch.device("cuda")
    rates = {batch: in_process_rates(batch, concurrent(batch), device, vq, our_flags)
             for batch in sorted({b for b, _ in runs})}
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
          f"flags {' '.join(OFFICIAL_FLAGS)}, random weights; ours with "
          f"{', '.join(f'{concurrent(b)} at once at batch {b}' for b in sorted(rates))}")
    print("\n".join(table(rows, official, rates)))
    print("\nLoading, step by step:")
    print("\n".join(f"- {r['run']}, batch {r['batch']}: {r['loading_steps']}" for r in rows))
    print("\nIn one process, warm (the cap of the 50k projection: both together):")
    print("\n".join(rates_table(rates, concurrent)))
    if not args.keep_samples:
        for entry in os.listdir(work):
            path = os.path.join(work, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)


if __name__ == "__main__":
    run_main(main)

"""How long the samplers take to load a model from its checkpoint: the way they load it
(autoregressive/weights.py's build_from_checkpoint: built on the meta device, the file's tensors taken as
the weights) against building it with random weights and copying the checkpoint into them, as
load_state_dict into a built model does (the official scripts' way). Each then moves to --device and is
cast to --precision, as load_gpt / load_vq do.

Random weights saved as float32 checkpoints in a temporary folder (the released files' dtype); repetitions
of the two ways interleaved, medians reported; the file is read once before timing, so both read it from
the page cache. Each row also says whether the two models hold the same weights.

    python -m scripts.bench_load --models ARPG-L,ARPG-XXL,VQ-16
"""
import argparse
import os
import statistics
import tempfile
from typing import Callable, Dict, List

import torch
import torch._dynamo  # noqa: F401  imported by the samplers' torch.compile on CUDA; else the meta device's first use times it

from autoregressive.models.arpg import ARPG_models
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.device import resolve_device
from autoregressive.weights import PRECISIONS, build_from_checkpoint, load_model_weights
from scripts.bench_common import markdown_table, timed
from tokenizer.vq_model import VQ_models

BUILDERS: Dict[str, Callable[[], torch.nn.Module]] = {**ARPG_models, **VQ_models}


def bench_model(name: str, folder: str, device: torch.device, dtype: torch.dtype, reps: int) -> dict:
    build = BUILDERS[name]
    path = os.path.join(folder, f"{name}.pt")
    source = build().state_dict()
    torch.save({"model": source}, path)
    size_gb = os.path.getsize(path) / 1e9
    del source
    ways = {"random weights, then copied": lambda: load_model_weights(build(), path),
            "built from the checkpoint": lambda: build_from_checkpoint(build, path)}
    seconds: Dict[str, List[float]] = {way: [] for way in ways}
    models = {}
    for _ in range(reps):
        for way, load in ways.items():
            models.pop(way, None)  # the previous repetition's copy goes first: at most one of each way held
            models[way], took = timed(lambda: load().to(device=device, dtype=dtype).eval())
            seconds[way].append(took)
    first, second = (models[way].state_dict() for way in ways)
    same = all(torch.equal(first[key], second[key]) for key in first)
    os.remove(path)
    medians = {way: statistics.median(times) for way, times in seconds.items()}
    old, new = medians.values()
    return {"model": name, "checkpoint GB": f"{size_gb:.2f}", **{f"{way} s": f"{s:.2f}" for way, s in medians.items()},
            "speed-up": f"{old / new:.1f}x", "same weights": "yes" if same else "NO"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ARPG-L,ARPG-XXL,VQ-16",
                        help=f"comma-separated, from {', '.join(BUILDERS)}")
    parser.add_argument("--precision", default="bf16", choices=list(PRECISIONS), help="the dtype each is cast to")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--reps", type=int, default=3)
    return parser


def main(argv=None) -> List[dict]:
    args = get_args_parser().parse_args(argv)
    check_at_least("--reps", args.reps, 1)
    names = [name for name in args.models.split(",") if name]
    unknown = [name for name in names if name not in BUILDERS]
    if unknown or not names:
        raise UserError(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(BUILDERS)}")
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        rows = [bench_model(name, folder, device, PRECISIONS[args.precision], args.reps) for name in names]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}, torch {torch.__version__}, to {device.type} in {args.precision}, medians of {args.reps}")
    print("\n".join(markdown_table(rows)))
    return rows


if __name__ == "__main__":
    run_main(main)

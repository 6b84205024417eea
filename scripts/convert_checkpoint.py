"""Convert a sharded (--data-parallel fsdp) training checkpoint folder into one file that
sample_c2i.py / sample_c2i_ddp.py load with --gpt-ckpt (model and EMA weights, official names).

    python -m scripts.convert_checkpoint results/000-ARPG-XXL/checkpoints/0100000 arpg_xxl_100k.pt
"""
import argparse
import os

from autoregressive.train.checkpoint import convert_sharded_checkpoint
from autoregressive.utils.cli import InputNotFound, UserError, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a sharded checkpoint folder (results/NNN-model/checkpoints/NNNNNNN)")
    parser.add_argument("output", help="the single .pt file to write")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.checkpoint):
        raise InputNotFound(f"{args.checkpoint}: no such checkpoint folder; pass results/NNN-model/checkpoints/NNNNNNN")
    if os.path.abspath(args.output) == os.path.abspath(args.checkpoint):
        raise UserError("the output file must not be the checkpoint folder itself")
    converted = convert_sharded_checkpoint(args.checkpoint, args.output)
    entries = [entry for entry in ("model", "ema") if getattr(converted, entry) is not None]
    print(f"wrote {args.output}: {converted.model_name} step {converted.progress.step}, weights {entries}")


if __name__ == "__main__":
    run_main(main)

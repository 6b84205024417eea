"""VQ-16 decoding throughput (tokens -> uint8 images, as sample_c2i_ddp.py renders them), variant by variant.

Random VQ-16 weights and random tokens (throughput does not depend on them). Each variant decodes the same
tokens; repetitions of the variants are interleaved and the medians reported, with each variant's pixels
against the first variant's (eager float32 with TF32, as the official scripts decode): the largest
difference in grey levels and the share of pixels that differ at all.

Variants (--variants, comma-separated): a base, then any of its options joined by "+"; the layout is
the default NCHW unless +cl:
  eager        float32, TF32 on (what the official scripts decode with)
  compiled     torch.compile of the decoder
  fp16         the compiled decoder in float16 (--vq-precision fp16, opt-in)
  +cl          channels_last (NHWC) weights, and so latents (VQModel.decode_code keeps them NHWC);
               compiled+cl is sample_c2i_ddp.py's default (prepare_vq)
  +bm          cuDNN times its convolution algorithms first (torch.backends.cudnn.benchmark)
  +tuned       compiled outside Inductor's deterministic mode (prepare_vq compiles inside it): Inductor
               then times some reductions' block sizes at the first call and keeps the fastest, which may
               sum in another order in another process
e.g. eager,eager+cl,eager+bm,compiled,compiled+cl+bm,compiled+cl+tuned.

    python -m scripts.bench_vq_decode --batch-sizes 32 128 250

--save-pixels DIR writes each variant's pixels at each batch (DIR/b{batch}-{variant}.npy) and
--compare-pixels DIR compares this run's with those, so two processes can be compared; each with an empty
compile cache, they show whether a compiled variant decodes the same pixels in every process:

    V="--variants eager,compiled+cl,compiled+cl+tuned --batch-sizes 250"
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python -m scripts.bench_vq_decode $V --save-pixels first
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python -m scripts.bench_vq_decode $V --compare-pixels first
"""
import argparse
import copy
import os
import statistics
from typing import Optional

import numpy as np
import torch

from autoregressive.render import tokens_to_pixels
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.device import enable_tf32, resolve_device
from autoregressive.weights import prepare_vq
from scripts.bench_common import pixel_difference, timed
from tokenizer.vq_model import VQConfig, VQModel

BASES, OPTIONS = ("eager", "compiled", "fp16"), ("cl", "bm", "tuned")
DEFAULT_VARIANTS = "eager,eager+cl,eager+bm,eager+cl+bm,compiled,compiled+bm,compiled+cl+bm,fp16+bm"


def build(name: str, base, device):
    kind, *options = name.split("+")
    dtype = torch.float16 if kind == "fp16" else torch.float32
    tuned = "tuned" in options and kind != "eager"
    vq = prepare_vq(copy.deepcopy(base), device, dtype, compile_decoder=kind != "eager" and not tuned,
                    channels_last="cl" in options)
    if tuned and torch.device(device).type == "cuda":  # prepare_vq compiles on CUDA only, as here
        vq.decoder.compile()
    return vq


def decoder(vq, options):
    benchmark = "bm" in options

    def run(tokens):
        torch.backends.cudnn.benchmark = benchmark
        return tokens_to_pixels(tokens, 16, vq, vq.config.codebook_size)[0]
    return run


def parse_variants(text: str):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name.split("+")[0] not in BASES or
               any(option not in OPTIONS for option in name.split("+")[1:])]
    if unknown or not names:
        raise UserError(f"--variants: unknown {', '.join(unknown) or '(none)'}; a base of {', '.join(BASES)}, "
                        f"then options joined by '+': {', '.join(OPTIONS)}")
    return names


@torch.inference_mode()
def bench(batch_sizes, variants, reps, device, config: Optional[VQConfig] = None, save_pixels: Optional[str] = None,
          compare_pixels: Optional[str] = None):
    """Rows (batch, variant, img/s, max grey-level difference to the first variant, share of pixels differing)
    for a random VQ model of config (VQ-16's by default) on a 16 x 16 grid of random codes. Each variant's
    pixels go to save_pixels/b{batch}-{variant}.npy if given, and are compared with compare_pixels' (a line
    each)."""
    torch.manual_seed(0)
    base = VQModel(config or VQConfig())
    models = {name: build(name, base, device) for name in variants}
    runs = {name: decoder(models[name], name.split("+")[1:]) for name in variants}
    rows = []
    for batch in batch_sizes:
        generator = torch.Generator(device).manual_seed(batch)
        tokens = torch.randint(0, base.config.codebook_size, (batch, 256), device=device, generator=generator)
        images = {}
        for name in variants:  # warm-up: compilation at this shape, cuDNN's choices
            images[name], seconds = timed(lambda: runs[name](tokens))
            print(f"b{batch} {name}: first call {seconds:.1f} s", flush=True)
        times = {name: [] for name in variants}
        for _ in range(reps):
            for name in variants:
                times[name].append(timed(lambda: runs[name](tokens))[1])
        if save_pixels:
            os.makedirs(save_pixels, exist_ok=True)
            for name in variants:
                np.save(os.path.join(save_pixels, f"b{batch}-{name}.npy"), images[name].cpu().numpy())
        if compare_pixels:
            for name in variants:
                print(f"b{batch} {name}: {against_saved(images[name], compare_pixels, batch, name)}", flush=True)
        for name in variants:
            worst, share = pixel_difference(images[name], images[variants[0]])
            rows.append((batch, name, batch / statistics.median(times[name]), worst, share))
    return rows


def against_saved(pixels: torch.Tensor, folder: str, batch: int, name: str) -> str:
    path = os.path.join(folder, f"b{batch}-{name}.npy")
    if not os.path.exists(path):
        return f"nothing to compare with ({path} not found)"
    worst, share = pixel_difference(pixels, np.load(path))
    if not worst:
        return f"the same pixels as {path}"
    return f"DIFFERENT from {path}: {share:.3%} of values, at most {worst} levels"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 250])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated (see above)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda or cpu")
    parser.add_argument("--save-pixels", metavar="DIR", default=None,
                        help="write each variant's pixels to DIR (see above)")
    parser.add_argument("--compare-pixels", metavar="DIR", default=None,
                        help="compare each variant's pixels with those that --save-pixels wrote to DIR")
    args = parser.parse_args(argv)
    variants = parse_variants(args.variants)
    check_at_least("--reps", args.reps, 1)
    for batch in args.batch_sizes:
        check_at_least("--batch-sizes", batch, 1)
    enable_tf32()
    torch._dynamo.config.cache_size_limit = 64  # one compiled decoder per variant and batch size
    device = resolve_device(args.device)
    rows = bench(args.batch_sizes, variants, args.reps, device, save_pixels=args.save_pixels,
                 compare_pixels=args.compare_pixels)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}, medians of {args.reps}")
    print(f"| batch | variant | img/s | x {variants[0]} | max grey-level difference | pixels differing |")
    print("|---|---|---|---|---|---|")
    for batch, variant, rate, worst, share in rows:
        base = next(r for b, v, r, _, _ in rows if b == batch and v == variants[0])
        print(f"| {batch} | {variant} | {rate:.1f} | {rate / base:.2f}x | {worst} | {share:.2%} |")


if __name__ == "__main__":
    run_main(main)

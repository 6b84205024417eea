"""Sample many images with one or more processes into PNGs and an .npz for the ADM evaluator.

    torchrun --nproc_per_node=8 sample_c2i_ddp.py --gpt-model ARPG-L --gpt-ckpt arpg_300m.pt \\
        --vq-ckpt vq_ds16_c2i.pt --sample-schedule arccos --cfg-scale 5.0 --step 64

Sample i has class i mod num_classes. A controllable model samples under --condition-map (one map, or
one per sample) or --condition-path, a condition folder such as ImageNet val's edges: sample i then
takes the folder's i-th map and that file's class, as ControlAR evaluates. Batch k holds samples
[k*B, (k+1)*B) (B = --per-proc-batch-size) and runs on rank k mod world size with randomness drawn
from (--global-seed, k*B): at a fixed B the images do not depend on the number of processes. Each PNG
(or, with --no-png, each batch's .npy file) is written atomically and a rerun skips finished batches,
so a killed run resumes. Rank 0 finally packs arr_0 (N, H, W, 3) uint8 and labels. On CUDA each process
samples --concurrent-batches batches at once, each on a stream and sampler of its own
(autoregressive/sampler_pool.py), and the VQ decoding and the writing of a batch overlap the sampling of
the next (autoregressive/image_output.py); neither changes an image.
"""
import argparse
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from autoregressive.fast_generate import make_sampler
from autoregressive.image_output import (DecoderThread, ImageWriter, StageClock, batch_path, default_workers, png_path,
                                         render_function, stored_batches)
from autoregressive.model_args import add_model_args, check_model_args, model_from_args
from autoregressive.pretrained import with_checkpoints_fetched
from autoregressive.sampler_pool import SamplerPool, default_concurrent_batches
from autoregressive.sampling import SamplingConfig, add_sampling_args, batch_generator
from autoregressive.utils.cli import RenamedFlag, UserError, check_at_least, check_at_most, run_main
from autoregressive.utils.device import enable_tf32
from autoregressive.utils.dist import barrier, check_shared_folder, cleanup, init_distributed
from autoregressive.utils.files import output_folder, remove_stale_temporaries, write_atomic
from autoregressive.utils.logger import get_logger
from autoregressive.weights import PRECISIONS
from dataset.conditions import ConditionFolder, add_condition_args, check_condition_args, load_condition_map

DEFAULT_NUM_SAMPLES = 50000  # ImageNet's val set, the FID reference
LAUNCHED = time.time()  # the start of this process's wall time in --timings, its imports done


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DDP sampling into PNGs and an ADM .npz.")
    add_model_args(parser, precision="bf16")
    parser.add_argument("--compile", action="store_true", default=True,
                        help="decode with CUDA graphs (the fast sampler; default, the official flag's name); "
                             "same tokens as the reference loop")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="decode with the reference loop")
    parser.add_argument("--compile-layers", action="store_true",
                        help="also compile the layers: faster (docs/speed.md), logits as close to float32 as the "
                             "eager layers' but not bitwise equal to them, so samples differ where tokens nearly tie")
    parser.add_argument("--fused", dest="compile_layers", action=RenamedFlag, new_flag="--compile-layers", nargs=0,
                        const=True)
    parser.add_argument("--vq-precision", choices=list(PRECISIONS), default="none",
                        help="decoder dtype: none = float32 as the official scripts (TF32 on); fp16 moves pixels by at "
                             "most 3 levels of 255 and is faster (docs/speed.md); bf16 moves them by up to 24 levels")
    parser.add_argument("--compile-vq", action=argparse.BooleanOptionalAction, default=True,
                        help="compile the VQ decoder on CUDA (faster decoding; about a minute to compile)")
    parser.add_argument("--image-size-eval", type=int, default=None, help="resize (bicubic) before saving")
    parser.add_argument("--sample-dir", default="samples")
    parser.add_argument("--per-proc-batch-size", type=int, default=32)
    parser.add_argument("--concurrent-batches", type=int, default=None,
                        help="batches each process samples at once, each on a CUDA stream with its own graphs and "
                             "KV cache (default on CUDA: enough for 128 images, at most 4: 4 at batch 32, 1 from 128 "
                             "on; 1 on the CPU): the same images, faster at small batches (docs/speed.md); lower it "
                             "if the GPU runs out of memory")
    parser.add_argument("--num-fid-samples", type=int, default=None,
                        help=f"default: {DEFAULT_NUM_SAMPLES}, or the number of maps in --condition-path")
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                        help="one PNG per sample (the official layout); --no-png: one .npy file per batch in the "
                             "sample folder instead, packed into the same .npz (same arrays, resumable, no PNG "
                             "encoding)")
    parser.add_argument("--timings", metavar="PATH", default=None,
                        help="write the seconds spent per stage (model, VQ decoding, writing, packing) as JSON to "
                             "PATH (.rankN appended with several processes); scripts/bench_sample_ddp.py reads it")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ignored = parser.add_argument_group(
        "compatibility", "accepted so the official command lines run, and ignored: checkpoint layouts are "
        "detected, class-conditional is the only model type, and the VQ model fixes its code dimension")
    ignored.add_argument("--gpt-type", choices=["c2i"], default="c2i")
    ignored.add_argument("--from-fsdp", action="store_true")
    ignored.add_argument("--codebook-embed-dim", type=int, default=8)
    add_condition_args(parser, with_folder=True)
    # The official sample_c2i_ddp.py's defaults: CFG 2.0 and 256 steps (one token per step at 256x256).
    return add_sampling_args(parser, cfg_scale=2.0, num_steps=256)



def folder_name(args, image_size: int, image_size_eval: int) -> str:
    ckpt = os.path.basename(args.gpt_ckpt).replace(".safetensors", "").replace(".pth", "").replace(".pt", "")
    vq = args.vq_model if args.vq_ckpt else "no-vq"
    return (f"{args.gpt_model}-{ckpt}-size-{image_size}-size-{image_size_eval}-{vq}-topk-{args.top_k}-topp-{args.top_p}-"
            f"temperature-{args.temperature}-cfg-{args.cfg_scale}-cfg-schedule-{args.cfg_schedule}-"
            f"sample-schedule-{args.sample_schedule}-step-{args.step}-seed-{args.global_seed}{numerics_suffix(args)}"
            f"{condition_suffix(args)}")


def numerics_suffix(args) -> str:
    """Names non-default numerics (weights dtype, KV cache) in the folder name, so such a run never resumes
    into the PNGs of another; the default name stays the official one."""
    parts = [f"-precision-{args.precision}" if args.precision != "bf16" else "",
             f"-kv-cache-{args.kv_cache}" if args.kv_cache != "weights" else ""]
    return "".join(parts)


def condition_suffix(args) -> str:
    """Names the condition maps in the folder name, so a conditioned run never resumes an unconditioned one."""
    source = args.condition_map or args.condition_path
    if not source:
        return ""
    return "-condition-" + os.path.basename(os.path.normpath(source)).replace(".npy", "")


# zlib level 1, not Pillow's 6: the same pixels (PNG is lossless; tests/test_sample_ddp.py checks them) in
# files about a tenth larger, for well under half the encoding time. Encoding is the work of the PNG
# writers, which must keep up with the GPU (scripts/bench_sample_ddp.py measures whether they do).
PNG_COMPRESS_LEVEL = 1


def save_png_atomic(image: np.ndarray, path: str) -> None:
    write_atomic(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL))


def read_png_rgb(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pack_npz(folder: str, labels: np.ndarray, keep_batch_files: bool = True) -> str:
    """Stack samples 0..N-1 into {folder}.npz (arr_0 uint8 NHWC, labels (N,) int64), written atomically.
    Each sample comes from a batch file or else from its PNG; both are read on threads straight into one
    preallocated array (50,000 images at 256 are 9.8 GB). keep_batch_files=False then removes the batch
    files whose samples all have their PNGs (a PNG run's folder ends as the official layout)."""
    num_samples = len(labels)
    batches = {first: end for first, end in stored_batches(folder).items() if first < num_samples}
    from_png = np.ones(num_samples, dtype=bool)
    for first, end in batches.items():
        from_png[first:end] = False
    png_indices = np.flatnonzero(from_png).tolist()
    if batches:
        first_batch = min(batches)
        shape = np.load(batch_path(folder, first_batch, batches[first_batch]), mmap_mode="r").shape[1:]
        source = batch_path(folder, first_batch, batches[first_batch])
    else:
        shape, source = read_png_rgb(png_path(folder, png_indices[0])).shape, png_path(folder, png_indices[0])
    arr = np.empty((num_samples, *shape), dtype=np.uint8)

    def check_shape(found, path):
        if tuple(found) != tuple(shape):
            raise UserError(f"{folder} holds images of several sizes ({path} is {tuple(found)[:2]}, "
                            f"{source} is {tuple(shape)[:2]}); delete it and sample again")

    def fill_png(index: int) -> None:
        image = read_png_rgb(png_path(folder, index))
        check_shape(image.shape, png_path(folder, index))
        arr[index] = image

    def fill_batch(first: int) -> None:
        path = batch_path(folder, first, batches[first])
        images = np.load(path, mmap_mode="r")
        check_shape(images.shape[1:], path)
        end = min(batches[first], num_samples)
        arr[first:end] = images[:end - first]

    # every core: the other ranks are done, and decoding the PNGs back is CPU work (Pillow releases the GIL)
    with ThreadPoolExecutor(max_workers=default_workers(1)) as readers:
        list(readers.map(fill_batch, batches))
        list(readers.map(fill_png, png_indices))
    path = f"{folder}.npz"
    write_atomic(path, lambda tmp: np.savez(tmp, arr_0=arr, labels=labels))
    if not keep_batch_files:
        for first, end in batches.items():
            if all(os.path.exists(png_path(folder, index)) for index in range(first, end)):
                os.remove(batch_path(folder, first, end))
    return path


@dataclass(frozen=True)
class SampleInputs:
    """What sample i is generated under, a function of i alone: class i mod num_classes and no map; the
    same with row i of --condition-map; or file i of --condition-path, its class and its first row.
    Indices past the last sample only pad the final batch; their maps and folder classes are sample
    (i mod num_samples)'s."""
    num_samples: int
    num_classes: int
    maps: Optional[torch.Tensor] = None  # (num_samples, N) long condition ids from --condition-map
    folder: Optional[ConditionFolder] = None

    def labels(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) long global sample indices -> (B,) long classes on the same device."""
        if self.folder is None:
            return indices % self.num_classes
        return self.folder.labels[indices.cpu() % self.num_samples].to(indices.device)

    def condition_maps(self, indices: torch.Tensor) -> Optional[torch.Tensor]:
        """(B,) long global sample indices -> (B, N) long condition maps; None without conditions."""
        if self.maps is not None:
            return self.maps[indices.cpu() % self.num_samples].to(indices.device)
        if self.folder is not None:
            return self.folder.read_maps((indices.cpu() % self.num_samples).tolist()).to(indices.device)
        return None


def sample_inputs(args, config) -> SampleInputs:
    """The run's classes and condition maps; refuses maps that do not fit the model and more samples
    than the condition folder holds."""
    if not args.condition_path:
        num_samples = args.num_fid_samples or DEFAULT_NUM_SAMPLES
        maps = None
        if args.condition_map:
            maps = load_condition_map(args.condition_map, num_samples, config.block_size, config.condition_vocab_size)
        return SampleInputs(num_samples, config.num_classes, maps=maps)
    folder = ConditionFolder(args.condition_path)
    if folder.info.grid ** 2 != config.block_size:
        raise UserError(f"the maps in {args.condition_path} are {folder.info.grid}x{folder.info.grid}, but the model "
                        f"has {config.block_size} tokens; extract the conditions at the model's grid")
    num_samples = args.num_fid_samples or len(folder)
    check_at_most("--num-fid-samples", num_samples, len(folder), f"the number of maps in {args.condition_path}")
    too_big = (folder.labels[:num_samples] >= config.num_classes).nonzero()
    if len(too_big):
        path, label = folder.files[int(too_big[0])]
        raise UserError(f"{path} has class {label}, but the model has {config.num_classes} classes; pass the "
                        "condition folder of this model's data (or --num-classes)")
    return SampleInputs(num_samples, config.num_classes, folder=folder)


def check_args(args) -> int:
    """Refuse bad flags before any model is built or folder made; returns the condition vocabulary."""
    check_model_args(args)
    for flag in ("--per-proc-batch-size", "--num-fid-samples", "--codebook-embed-dim", "--image-size-eval",
                 "--concurrent-batches"):
        check_at_least(flag, getattr(args, flag[2:].replace("-", "_")), 1)
    return check_condition_args(args)


def main(args) -> None:
    condition_vocab_size = check_args(args)
    sampling = SamplingConfig.from_args(args)
    args = with_checkpoints_fetched(args)  # hf:// paths and omitted checkpoints -> local files
    info = init_distributed(args.device)
    clock = StageClock()
    clock.marks.update(imported=LAUNCHED, distributed=time.time())  # start-up's steps (bench_sample_ddp splits it)
    logger = get_logger("arpg.sample", rank=info.rank)
    if info.device.type == "cuda":
        enable_tf32()
    model, vq = model_from_args(args, info.device, condition_vocab_size=condition_vocab_size,
                                vq_dtype=PRECISIONS[args.vq_precision], compile_vq=args.compile_vq)
    config = model.config
    inputs = sample_inputs(args, config)
    clock.mark("loaded")  # start-up's first part: imports, CUDA, checkpoints (the samplers' graphs come next)
    if vq is None and config.vocab_size > 256:
        raise UserError("--vq-ckpt is required to turn image tokens into pixels (LlamaGen's vq_ds16_c2i.pt)")
    scale = args.downsample_size if vq is not None else 1
    image_size = config.grid_size * scale
    image_size_eval = args.image_size_eval or image_size
    folder = os.path.join(args.sample_dir, folder_name(args, image_size, image_size_eval))
    check_at_most("--step", args.step, config.block_size, "the number of tokens of an image")
    concurrent = args.concurrent_batches or (default_concurrent_batches(args.per_proc_batch_size)
                                             if info.device.type == "cuda" else 1)
    with output_folder(folder):
        if info.is_main:  # before any rank writes: check_shared_folder's collectives wait for it
            removed = remove_stale_temporaries(folder)
            if removed:
                logger.info(f"removed {removed} partial files of a killed run from {folder}")
        check_shared_folder(folder)  # rank 0 packs every rank's images
        pool = SamplerPool(lambda: make_sampler(model, use_fast=args.compile, compile_layers=args.compile_layers),
                           concurrent, info.device)
        try:
            sample_into(folder, inputs, model, vq, pool, sampling, image_size_eval, info, args, clock)
        finally:
            pool.close()
    clock.add("model", pool.busy_seconds)
    clock.mark("sampled")
    barrier()
    if info.is_main:
        start = time.perf_counter()
        path = pack_npz(folder, inputs.labels(torch.arange(inputs.num_samples)).numpy(), keep_batch_files=not args.png)
        clock.add("pack", time.perf_counter() - start)
        logger.info(f"saved {path}")
    clock.mark("packed")
    if args.timings:
        write_timings(f"{args.timings}.rank{info.rank}" if info.world_size > 1 else args.timings, clock, LAUNCHED)
    barrier()
    cleanup()


def sample_into(folder: str, inputs: SampleInputs, model, vq, pool: SamplerPool, sampling: SamplingConfig,
                image_size_eval: int, info, args, clock: StageClock) -> None:
    """This rank's batches into folder (PNGs, or one .npy per batch with --no-png), pool.size of them sampling
    at once; finished batches of an earlier run are skipped."""
    logger, config = get_logger("arpg.sample", rank=info.rank), model.config
    batch, total = args.per_proc_batch_size, inputs.num_samples
    my_batches = range(info.rank, math.ceil(total / batch), info.world_size)
    logger.info(f"sampling {total} images into {folder} ({len(my_batches)} batches of {batch} on rank 0, "
                f"{pool.size} at once)")
    progress = my_batches
    if info.is_main:
        from tqdm import tqdm

        progress = tqdm(my_batches, desc="sample", unit="batch", dynamic_ncols=True)
    render = render_function(config.grid_size, vq, config.vocab_size, image_size_eval)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    # The VQ decoder of a batch runs on a thread and a CUDA stream of its own while the next batches
    # sample, and its images are written by threads behind that (autoregressive/image_output.py).
    writer = ImageWriter(folder, args.png, lambda image, path: save_png_atomic(image, path), clock,
                         default_workers(local_processes))
    decoder = DecoderThread(render, writer, clock)
    stored = stored_batches(folder)

    def jobs():  # (first sample, count) and the sampler's arguments of each batch still to make
        for k in progress:
            first = k * batch
            indices = [i for i in range(first, first + batch) if i < total]
            if writer.finished(indices, stored):
                continue
            batch_indices = torch.arange(first, first + batch, device=info.device)
            condition_map = inputs.condition_maps(batch_indices)
            extra = {} if condition_map is None else {"condition_map": condition_map}
            yield ((first, len(indices)), (inputs.labels(batch_indices), sampling,
                                           batch_generator(info.device, args.global_seed, first)), extra)

    try:
        for (first, count), tokens in pool.imap(jobs()):
            clock.mark("first_batch_sampled")
            decoder.put(first, count, tokens)
    except torch.cuda.OutOfMemoryError as error:
        raise out_of_memory(batch, pool.size, progress if info.is_main else None) from error
    finally:
        try:
            decoder.close()
        except torch.cuda.OutOfMemoryError as error:  # in the VQ decoder
            raise out_of_memory(batch, pool.size, progress if info.is_main else None) from error
        finally:
            writer.close()


def out_of_memory(batch: int, concurrent: int, progress) -> UserError:
    if progress is not None:
        progress.close()  # the error's line must not land on the bar's line
    if concurrent > 1:
        return UserError(f"out of GPU memory with {concurrent} batches of {batch} at once: pass --concurrent-batches "
                         f"{concurrent - 1} (the same images); the finished images are kept and skipped on the rerun")
    return UserError(f"out of GPU memory at --per-proc-batch-size {batch}: lower it; the finished images are kept and "
                     "skipped on the rerun (the samples still to come are drawn under the new batch size)")


def write_timings(path: str, clock: StageClock, launched: float) -> None:
    """The stage times of this process as JSON (scripts/bench_sample_ddp.py reads them)."""
    record = {"launched": launched, "seconds": dict(clock.seconds), "marks": clock.marks,
              "written": sorted(clock.written)}

    def write(tmp: str) -> None:
        with open(tmp, "w") as file:
            json.dump(record, file, indent=1)
    write_atomic(path, write)


if __name__ == "__main__":
    run_main(lambda argv: main(get_args_parser().parse_args(argv)))

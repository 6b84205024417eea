"""Training throughput on one GPU: the optimizer step that train_c2i.py runs (`Trainer.optimizer_step`:
forward, backward, gradient clipping, fused AdamW; without --ema) on random codes, bf16 autocast,
compiled. Prints, per model, batch and data-parallel mode,
img/s (median of the repetitions), peak memory and MFU (model FLOPs: recomputation not counted), and
checks numerics: the loss of one fixed batch (fixed orders, eval mode: no dropout) in bf16, eager and
compiled, against the eager float32 path.

    python -m scripts.bench_train --models ARPG-L --batch-sizes 128
    python -m scripts.bench_train --models ARPG-L,ARPG-XL,ARPG-XXL --batch-sizes 64,128 --modes ddp,fsdp
    python -m scripts.bench_train --models ARPG-XXL --batch-sizes 128 --chunked-loss --grad-checkpointing 32

ddp at world size 1 is the compiled model itself (train_c2i.py wraps DDP only for several ranks);
fsdp is FSDP2 with every layer compiled and sharded over a one-process group.
"""
import argparse
import gc
import os
import statistics
import time

import torch

from autoregressive.models.arpg import ARPG_models
from autoregressive.train.config import TrainConfig, build_model
from autoregressive.train.loop import Trainer
from autoregressive.train.parallel import set_activation_memory_budget
from autoregressive.utils.cli import UserError, check_at_least, run_main
from autoregressive.utils.dist import DistInfo, cleanup, init_distributed

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def peak_tflops() -> float:
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), float("nan"))


def flops_per_image(model) -> float:
    """Forward + backward model FLOPs of one image: 6 x (parameters used in matmuls) x tokens, plus
    the causal attention scores and weighted sums of every layer."""
    config = model.config
    matmul_params = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embeddings" not in name)
    tokens = config.block_size
    attention = config.n_layer * 2 * tokens * tokens * config.dim  # causal: half of 2 matmuls x 2 n^2 D
    return 6 * matmul_params * tokens + 3 * attention


def fixed_batch_loss(model, codes, labels, orders, autocast: bool) -> float:
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and codes.is_cuda):
        _, loss = model(codes, labels, targets=codes, orders=orders)
    model.train()
    return loss.item()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(name: str, batch: int, mode: str, args, info: DistInfo) -> dict:
    device = info.device
    cfg = TrainConfig(code_path="", gpt_model=name, global_batch_size=batch, compile=not args.no_compile,
                      chunked_loss=args.chunked_loss, grad_checkpointing=args.grad_checkpointing,
                      data_parallel=mode, num_workers=0)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head (the training init) makes every loss log V
    config = model.config
    codes = torch.randint(0, config.vocab_size, (batch, config.block_size), device=device)
    labels = torch.randint(0, config.num_classes, (batch,), device=device)
    result = {"model": name, "batch": batch, "mode": mode, "flops": flops_per_image(model)}
    if args.check_loss:
        orders = torch.rand(batch, config.block_size, device=device).argsort(1)
        result["loss_fp32"] = fixed_batch_loss(model, codes, labels, orders, autocast=False)
        result["loss_bf16"] = fixed_batch_loss(model, codes, labels, orders, autocast=True)
    # Compiles and wraps (ddp) or shards (fsdp) the model as a training run does.
    trainer = Trainer(cfg, info, torch.utils.data.TensorDataset(codes.cpu(), labels.cpu()), model=model)
    if args.check_loss:
        result["loss_compiled"] = fixed_batch_loss(trainer.train_model, codes, labels, orders, autocast=True)
    step = [(codes, labels)]  # one micro-batch: gradient accumulation 1
    try:
        for _ in range(3):  # compile and warm up
            trainer.optimizer_step(step)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rates = []
        for _ in range(args.reps):
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.optimizer_step(step)
            synchronize(device)
            rates.append(args.steps * batch / (time.perf_counter() - start))
        result["img_s"] = statistics.median(rates)
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    except torch.OutOfMemoryError:
        result["img_s"], result["peak_gib"] = None, None
    del model, trainer
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def init_one_process_group() -> DistInfo:
    """A process group of this one process (FSDP needs one), as torchrun --nproc_per_node=1 would make."""
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29517"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    return init_distributed("cuda", always_group=True)


def positive_ints(flag: str, text: str):
    """'64,128' -> [64, 128], refused with the flag's name unless every item is an integer >= 1."""
    items = text.split(",")
    if not all(item.strip().isdigit() and int(item) >= 1 for item in items):
        raise UserError(f"{flag} must be comma-separated integers >= 1, got {text!r}")
    return [int(item) for item in items]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ARPG-L", help="comma-separated, from " + ", ".join(ARPG_models))
    parser.add_argument("--batch-sizes", default="128", help="comma-separated batch sizes per GPU")
    parser.add_argument("--modes", default="ddp", help="comma-separated: ddp, fsdp")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--chunked-loss", action="store_true", help="cross-entropy without keeping the logits")
    parser.add_argument("--grad-checkpointing", default="none",
                        help="layers recomputed in the backward pass: none, all, self, cross or a number")
    parser.add_argument("--activation-memory-budget", type=float, default=None,
                        help="torch.compile's partitioner budget: below 1 it recomputes cheap ops to save memory")
    parser.add_argument("--no-check-loss", dest="check_loss", action="store_false",
                        help="skip the fixed-batch loss check (saves the memory of the float32 forward)")
    args = parser.parse_args(argv)
    batch_sizes = positive_ints("--batch-sizes", args.batch_sizes)
    check_at_least("--steps", args.steps, 1)
    check_at_least("--reps", args.reps, 1)
    unknown = [name for name in args.models.split(",") if name not in ARPG_models]
    unknown += [mode for mode in args.modes.split(",") if mode not in ("ddp", "fsdp")]
    if unknown:
        raise UserError(f"unknown --models / --modes {unknown}; models: {', '.join(ARPG_models)}; modes: ddp, fsdp")
    if not torch.cuda.is_available():
        raise UserError("bench_train.py times training on a CUDA GPU; none is visible")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.activation_memory_budget is not None:
        set_activation_memory_budget(args.activation_memory_budget)
    modes = args.modes.split(",")
    info = init_one_process_group() if "fsdp" in modes else init_distributed("cuda")
    results = [bench_one(name, batch, mode, args, info) for name in args.models.split(",")
               for batch in batch_sizes for mode in modes]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast, "
          f"{'eager' if args.no_compile else 'compiled'}, chunked loss {args.chunked_loss}, "
          f"grad checkpointing {args.grad_checkpointing}, activation memory budget {args.activation_memory_budget}")
    print("| model | batch / GPU | mode | img/s (median) | peak GiB | MFU |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if r["img_s"] is None:
            print(f"| {r['model']} | {r['batch']} | {r['mode']} | out of memory | - | - |")
            continue
        mfu = r["img_s"] * r["flops"] / (peak_tflops() * 1e12)
        print(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['img_s']:.0f} | {r['peak_gib']:.1f} | {100 * mfu:.1f}% |")
    for r in results:
        if "loss_fp32" in r:
            print(f"{r['model']} b{r['batch']} {r['mode']}: loss of a fixed batch: eager float32 {r['loss_fp32']:.5f}, "
                  f"eager bf16 {r['loss_bf16']:.5f}, compiled bf16 {r['loss_compiled']:.5f}")
    cleanup()


if __name__ == "__main__":
    run_main(main)

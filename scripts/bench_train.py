"""Training throughput on one GPU: forward, backward and fused AdamW step on random codes, bf16
autocast, compiled, as train_c2i.py runs it. Prints img/s and peak memory, and checks numerics: the
loss of one fixed batch (fixed orders, eval mode: no dropout) in bf16 against the eager float32 path.

    python scripts/bench_train.py --gpt-model ARPG-L --batch-size 128
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autoregressive.models.arpg import ARPG_models  # noqa: E402
from autoregressive.train.optim import build_optimizer  # noqa: E402


def fixed_batch_loss(model, codes, labels, orders, autocast: bool) -> float:
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        _, loss = model(codes, labels, targets=codes, orders=orders)
    model.train()
    return loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpt-model", default="ARPG-L", choices=list(ARPG_models))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--chunked-loss", action="store_true", help="cross-entropy without keeping the logits")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute layers in the backward pass")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = ARPG_models[args.gpt_model](grad_checkpointing=args.grad_checkpointing).to(device)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    config = model.config
    codes = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size), device=device)
    labels = torch.randint(0, config.num_classes, (args.batch_size,), device=device)
    orders = torch.rand(args.batch_size, config.block_size, device=device).argsort(1)
    eager_fp32 = fixed_batch_loss(model, codes, labels, orders, autocast=False)
    eager_bf16 = fixed_batch_loss(model, codes, labels, orders, autocast=True)

    optimizer = build_optimizer(model, 1e-4, 0.05, (0.9, 0.95), fused=True)
    train_model = model if args.no_compile else torch.compile(model)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = train_model(codes, labels, targets=codes, return_logits=not args.chunked_loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    compiled_bf16 = fixed_batch_loss(train_model, codes, labels, orders, autocast=True)
    for _ in range(3):  # compile and warm up
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(args.reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| model | batch | compiled | chunked loss | grad checkpointing | img/s (median) | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.gpt_model} | {args.batch_size} | {not args.no_compile} | {args.chunked_loss} | "
          f"{args.grad_checkpointing} | {statistics.median(rates):.0f} | {peak:.1f} |")
    print(f"loss of a fixed batch: eager float32 {eager_fp32:.5f}, eager bf16 {eager_bf16:.5f}, "
          f"compiled bf16 {compiled_bf16:.5f}")


if __name__ == "__main__":
    main()

"""The check's files: report.md (both tables), training.csv, sampling.csv and losses.png."""
import csv
import math
import os
from typing import Dict, List

from scripts.bench_common import markdown_table
from scripts.precision_check.data import learned_below, loss_floor
from scripts.precision_check.judge import TOLERANCE, run_to_run


def write_csv(rows: List[dict], path: str) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)


def plot_losses(curves: Dict[str, List[float]], floor: float, vocab_size: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for name, losses in curves.items():
        axis.plot(range(1, len(losses) + 1), losses, label=name, linewidth=1)
    axis.axhline(math.log(vocab_size), color="grey", linestyle=":", label="ln V (chance)")
    axis.axhline(floor, color="black", linestyle="--", label="lowest possible")
    axis.set(xlabel="optimizer step", ylabel="training loss (nats)", title="training loss under each precision policy")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(args, training: List[dict], sampling: List[dict], curves: Dict[str, List[float]]) -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    floor = loss_floor(args.vocab_size, args.resample_fraction)
    lines = [f"{args.gpt_model}, {args.steps} steps of batch {args.batch_size}, {args.num_classes} classes, "
             f"{args.resample_fraction:.0%} of positions redrawn: ln V = {math.log(args.vocab_size):.3f}, "
             f"lowest possible loss {floor:.3f}", "", "Training (held-out loss in float32):", "",
             *markdown_table(training)]
    yardstick = run_to_run(training, args.exact_seeds)
    if yardstick is not None:
        lines += ["", f"Run-to-run difference: {yardstick:.4g} (sqrt(2) x the standard deviation of the "
                      f"{args.exact_seeds} exact runs' held-out losses); a policy passes within "
                      f"{TOLERANCE:g}x it of exact's."]
    if sampling:
        lines += ["", "Sampling (next-token distributions read through the KV cache, against float32; exact run's "
                      "weights):", "", *markdown_table(sampling)]
    stuck = [row["run"] for row in training if row.get("learned") == "no"]
    if stuck:
        lines += ["", f"WARNING: {', '.join(stuck)} did not learn the set (held-out loss above "
                      f"{learned_below(args):.3f}, halfway from the class code-frequency plateau to the lowest "
                      "possible): raise --steps or --lr"]
    with open(os.path.join(args.out_dir, "report.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    write_csv(training, os.path.join(args.out_dir, "training.csv"))
    written = ["report.md", "training.csv"]
    if sampling:
        write_csv(sampling, os.path.join(args.out_dir, "sampling.csv"))
        written.append("sampling.csv")
    plot_losses(curves, floor, args.vocab_size, os.path.join(args.out_dir, "losses.png"))
    print("\n".join(lines))
    print(f"wrote {', '.join(written)} and losses.png to {args.out_dir}")

"""The pass rules: a training policy against exact's run-to-run difference, a sampling mode against its
yardstick's KL and top-1 disagreement, match shares within binomial noise."""
import math
import statistics
from typing import List, Optional

from scripts.precision_check.modes import SAMPLING_MODES

TOLERANCE = 2.0


def within_noise(share: float, reference: float, count: int) -> bool:
    """Two match shares of `count` samples each differ by no more than two standard errors of their
    difference (binomial, pooled), plus one sample."""
    pooled = (share + reference) / 2
    return abs(share - reference) <= 2 * math.sqrt(2 * pooled * (1 - pooled) / count) + 1 / count


def policy_passes(loss: float, exact_loss: float, run_to_run: float, share: float, exact_share: float,
                  count: int) -> bool:
    return abs(loss - exact_loss) <= TOLERANCE * run_to_run and within_noise(share, exact_share, count)


def mode_passes(kl: float, top1: float, share: float, yardstick_kl: float, yardstick_top1: float,
                reference_share: float, count: int) -> bool:
    close = kl <= TOLERANCE * yardstick_kl and 1 - top1 <= TOLERANCE * (1 - yardstick_top1)
    return close and within_noise(share, reference_share, count)


def run_to_run(rows: List[dict], exact_runs: int) -> Optional[float]:
    """The yardstick of the training policies: sqrt(2) x the standard deviation of the held-out losses of the
    first `exact_runs` rows (exact from successive seeds), the typical difference between two runs that
    differ only in their seed; with two runs, their difference. None until every exact run has finished."""
    losses = [row.get("held-out loss") for row in rows[:exact_runs]]
    return None if None in losses else math.sqrt(2) * statistics.stdev(losses)


def judge_policies(rows: List[dict], count: int, learned_below: float = math.inf, exact_runs: int = 2) -> None:
    """Fill each row's "vs exact" (held-out loss difference), "learned" (held-out loss under
    `learned_below`) and "pass" (rows: exact from `exact_runs` successive seeds, then the policies; a row
    that was not run has its reason in "pass" already). Until every exact run has learned the set, their
    differences are when each left the plateau, not numerics, and no policy can be judged against them."""
    exact, seeds = rows[0], rows[:exact_runs]
    missing = [row["run"] for row in seeds if "held-out loss" not in row]
    if missing:  # a failed exact run: nothing to judge against
        for row in rows:
            row["pass"] = row.pop("pass", None) or f"inconclusive: {' and '.join(missing)} did not finish"
        return
    yardstick = run_to_run(rows, exact_runs)
    stuck = [row["run"] for row in seeds if row["held-out loss"] >= learned_below]
    for row in rows:
        if "held-out loss" not in row:
            row["pass"] = row.pop("pass")  # the last column
            continue
        row["vs exact"] = row["held-out loss"] - exact["held-out loss"]
        row["learned"] = "yes" if row["held-out loss"] < learned_below else "no"
        passed = policy_passes(row["held-out loss"], exact["held-out loss"], yardstick, row["match share"],
                               exact["match share"], count)
        if stuck:
            row["pass"] = f"inconclusive: {' and '.join(stuck)} did not learn the set"
        elif row["learned"] == "no":
            row["pass"] = "no: did not learn the set"
        else:
            row["pass"] = "yes" if passed else "no"
    exact["pass"] = "reference"
    for row in seeds[1:]:
        row["pass"] = "run-to-run difference"


def judge_modes(rows: List[dict], count: int) -> None:
    """Fill each row's "yardstick" and "pass" (rows: float32 first, every yardstick before the modes
    judged against it)."""
    reference, by_name = rows[0], {row["mode"]: row for row in rows}
    reference["pass"] = "reference"
    for row in rows[1:]:
        row["yardstick"] = SAMPLING_MODES[row["mode"]].yardstick
        yardstick = by_name[row["yardstick"]]
        passed = mode_passes(row["KL vs float32"], row["top-1 agreement"], row["match share"], yardstick["KL vs float32"],
                             yardstick["top-1 agreement"], reference["match share"], count)
        row["pass"] = "yes" if passed else "no"

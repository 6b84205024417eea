"""Finished training runs on disk: each run's row and loss curve under <out-dir>/finished/ with the settings
it trained under, so that a check cut short by a time limit goes on with --resume where it stopped (a run
saved under other settings is trained again)."""
import json
import os
import re
from typing import Optional, Tuple

from autoregressive.utils.files import write_atomic

# Arguments that choose which runs a check makes, or where and how it reports, not what a run computes.
NOT_SETTINGS = {"out_dir", "parallel", "only_run", "run_file", "resume", "precision_policies", "mlp_kernels",
                "sampling_modes", "num_threads", "exact_seeds"}


def settings(args) -> dict:
    return {key: value for key, value in sorted(vars(args).items()) if key not in NOT_SETTINGS}


def path_of(args, run) -> str:
    return os.path.join(args.out_dir, "finished", re.sub(r"[^A-Za-z0-9]+", "-", run.name).strip("-") + ".json")


def save(args, run, row: dict, curve: list) -> None:
    record = {"run": run._asdict(), "settings": settings(args), "row": row, "curve": curve}
    os.makedirs(os.path.dirname(path_of(args, run)), exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w") as file:
            json.dump(record, file)
    write_atomic(path_of(args, run), write)


def load(args, run) -> Optional[Tuple[dict, list]]:
    """The saved (row, curve) of `run` under these settings, or None."""
    try:
        with open(path_of(args, run)) as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    if record.get("run") != run._asdict() or record.get("settings") != json.loads(json.dumps(settings(args))):
        return None
    return record["row"], record["curve"]

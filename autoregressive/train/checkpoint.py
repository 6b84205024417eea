"""Training checkpoints: plain data (loadable with weights_only=True), written atomically, with what an
exact resume needs: weights, optimizer, EMA, step, epoch, position in the epoch and every rank's RNG."""
import glob
import os
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from autoregressive.utils.dist import is_distributed
from autoregressive.utils.files import write_atomic


def rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(device: torch.device) -> List[Dict[str, torch.Tensor]]:
    """Every rank's RNG state, in rank order (on every rank)."""
    mine = rng_state(device)
    if not is_distributed():
        return [mine]
    states: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def save_atomic(payload: Dict[str, Any], path: str) -> None:
    """torch.save, atomically: never a half-written checkpoint."""
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"{step:07d}.pt")


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint of the highest step in run_dir/checkpoints, or None."""
    paths = glob.glob(os.path.join(run_dir, "checkpoints", "[0-9]*.pt"))
    return max(paths, key=lambda p: int(os.path.basename(p)[:-3])) if paths else None


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"could not read checkpoint {path}: {error}. It is corrupt or not one of our "
                         "training checkpoints; resume from an earlier one.") from error

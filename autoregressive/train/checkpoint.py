"""Training checkpoints: plain data (loadable with weights_only=True), written atomically, with what an
exact resume needs: weights, optimizer, EMA, step, epoch, position in the epoch and every rank's RNG.

Two forms: one file `checkpoints/NNNNNNN.pt` (DDP runs), or a folder `checkpoints/NNNNNNN/` (FSDP runs)
holding the sharded model, optimizer and EMA in torch.distributed.checkpoint format, each rank writing
its own shards, plus `trainer.pt` with the rest. `convert_sharded_checkpoint` turns a folder into the
single file that sampling loads.
"""
import glob
import os
import shutil
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from autoregressive.models.arpg import fused_state_dict_names
from autoregressive.utils.cli import InputNotFound, UserError
from autoregressive.utils.dist import barrier, is_distributed
from autoregressive.utils.files import write_atomic
from autoregressive.weights import first_line

TRAINER_FILE = "trainer.pt"  # inside a sharded checkpoint folder: step, epoch, config, RNG states


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


def checkpoint_path(run_dir: str, step: int, sharded: bool = False) -> str:
    return os.path.join(run_dir, "checkpoints", f"{step:07d}" + ("" if sharded else ".pt"))


def is_sharded_checkpoint(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, TRAINER_FILE))


def checkpoint_step(path: str) -> Optional[int]:
    """The step in a checkpoint's name, None for anything else (temporary or foreign files)."""
    stem = os.path.basename(path.rstrip("/"))
    stem = stem[:-3] if stem.endswith(".pt") else stem
    return int(stem) if stem.isdigit() else None


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint (file or complete sharded folder) of the highest step in run_dir/checkpoints, or None."""
    paths = [path for path in glob.glob(os.path.join(run_dir, "checkpoints", "[0-9]*"))
             if checkpoint_step(path) is not None and (os.path.isfile(path) or is_sharded_checkpoint(path))]
    return max(paths, key=checkpoint_step) if paths else None


def load_checkpoint(path: str) -> Dict[str, Any]:
    if is_sharded_checkpoint(path):
        path = os.path.join(path, TRAINER_FILE)
    if not os.path.isfile(path):
        raise InputNotFound(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"could not read checkpoint {path} ({first_line(error)}): it is corrupt or not one of "
                        "our training checkpoints; resume from an earlier one") from error


def _sharded_state(model, optimizer, ema) -> Dict[str, Any]:
    """The model, optimizer and EMA state of an FSDP run, each rank holding its shards. Fused
    projections keep their fused names: splitting a sharded tensor would gather it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    with fused_state_dict_names():
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        if ema is not None:
            state["ema"] = get_model_state_dict(ema)
    return state


def save_sharded(path: str, model, optimizer, ema, trainer_state: Dict[str, Any], is_main: bool) -> None:
    """Every rank writes its shards into `path`.tmp; rank 0 adds trainer.pt and renames the folder into
    place, so a folder under the final name is always complete."""
    import torch.distributed.checkpoint as dcp

    tmp = path + ".tmp"
    if is_main and os.path.exists(tmp):
        shutil.rmtree(tmp)  # left by a run killed while saving
    barrier()
    dcp.save(_sharded_state(model, optimizer, ema), checkpoint_id=tmp)
    if is_main:
        torch.save(trainer_state, os.path.join(tmp, TRAINER_FILE))
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    barrier()


def load_sharded(path: str, model, optimizer, ema) -> None:
    """Read a folder written by save_sharded into the sharded model, optimizer and EMA (same world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = _sharded_state(model, optimizer, ema)
    if ema is not None and not _has_entry(path, "ema"):
        raise UserError(f"{path} holds no EMA weights; resume without --ema or from a run trained with it")
    dcp.load(state, checkpoint_id=path)
    with fused_state_dict_names():
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        if ema is not None:
            set_model_state_dict(ema, state["ema"])


def _has_entry(path: str, entry: str) -> bool:
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(path).read_metadata()
    return any(key.startswith(entry + ".") for key in metadata.state_dict_metadata)


def convert_sharded_checkpoint(path: str, out_path: str) -> Dict[str, Any]:
    """Turn a sharded checkpoint folder into one file {"model", "ema" (if trained with it), "step",
    "config", "model_name"} with the official parameter names, which sample_c2i.py loads strictly.
    Runs in one process, without a process group and without the optimizer state."""
    import torch.distributed.checkpoint as dcp

    from autoregressive.train.loop import build_model
    from autoregressive.train.config import TrainConfig

    if not is_sharded_checkpoint(path):
        raise UserError(f"{path} is not a sharded checkpoint folder (it needs {TRAINER_FILE} beside the shards)")
    trainer_state = load_checkpoint(path)
    cfg = TrainConfig(**trainer_state["config"])
    entries = ["model"] + (["ema"] if _has_entry(path, "ema") else [])
    models = {entry: build_model(cfg) for entry in entries}
    with fused_state_dict_names():
        state = {entry: model.state_dict() for entry, model in models.items()}
        dcp.load(state, checkpoint_id=path, no_dist=True)
        for entry, model in models.items():
            model.load_state_dict(state[entry], strict=True)
    payload = {entry: model.state_dict() for entry, model in models.items()}  # official names
    payload.update(step=trainer_state["step"], config=trainer_state["config"], model_name=trainer_state["model_name"])
    save_atomic(payload, out_path)
    return payload

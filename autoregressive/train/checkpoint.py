"""Training checkpoints: plain data (loadable with weights_only=True), written atomically, with what an
exact resume needs: weights, optimizer, EMA, step, epoch, position in the epoch and every rank's RNG.

Two forms: one file `checkpoints/NNNNNNN.pt` (DDP runs), or a folder `checkpoints/NNNNNNN/` (FSDP runs)
holding the sharded model, optimizer and EMA in torch.distributed.checkpoint format, each rank writing
its own shards, plus `trainer.pt` with the rest. `convert_sharded_checkpoint` turns a folder into the
single file that sampling loads.

The layout of the saved dict is known to `pack` and `unpack` only; everything else handles a
`TrainingCheckpoint`. The dict carries FORMAT_VERSION, so a change of layout can still read old files.
"""
import dataclasses
import glob
import logging
import os
import shutil
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from autoregressive.train.config import build_model, saved_train_config
from autoregressive.utils.cli import InputNotFound, UserError
from autoregressive.utils.dist import any_rank, barrier, is_distributed
from autoregressive.utils.files import write_atomic
from autoregressive.weights import first_line, module_state_dict

TRAINER_FILE = "trainer.pt"  # inside a sharded checkpoint folder: step, epoch, config, RNG states
# 1: files written before the version was recorded (the same layout, without "format_version").
# 2: "format_version" recorded; converted files keep epoch and batch_in_epoch.
FORMAT_VERSION = 2
StateDict = Dict[str, torch.Tensor]
WRITE_FAILED_EXIT_CODE = 74  # sysexits' EX_IOERR


class CheckpointWriteFailed(UserError):
    """A checkpoint could not be written (disk full, folder read-only): the run ends, the earlier
    checkpoints stay as they were."""
    exit_code = WRITE_FAILED_EXIT_CODE

    def __init__(self, path: str, error: Optional[BaseException]):
        folder = os.path.dirname(os.path.abspath(path))
        cause = " (on rank 0)" if error is None else f" ({getattr(error, 'strerror', None) or first_line(error)})"
        previous = latest_checkpoint(os.path.dirname(folder))
        kept = f"the last complete one, {previous}, is intact" if previous else "no earlier checkpoint exists"
        super().__init__(f"could not write checkpoint {os.path.basename(path)} in {folder}{cause}; {kept} and no "
                         "partial file is left. Free space in that folder or make it writable (or pass another "
                         "--results-dir), then run the same command with --resume")


@dataclasses.dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer steps done in `epoch`


@dataclasses.dataclass
class TrainingCheckpoint:
    """What a training checkpoint holds. A sharded folder's trainer.pt has no weights (they are in the
    shards); a converted file has weights but neither optimizer nor RNG states (it is for sampling)."""
    progress: Progress
    config: Dict[str, Any]  # dataclasses.asdict(TrainConfig): enough to rebuild the model
    rng: Optional[List[Dict[str, torch.Tensor]]] = None  # every rank's RNG states, in rank order
    model: Optional[StateDict] = None
    optimizer: Optional[Dict[str, Any]] = None
    ema: Optional[StateDict] = None

    @property
    def model_name(self) -> str:
        return self.config["gpt_model"]


def pack(checkpoint: TrainingCheckpoint) -> Dict[str, Any]:
    """The plain-data dict that is saved (readable with weights_only=True)."""
    progress = checkpoint.progress
    payload = {"format_version": FORMAT_VERSION, "step": progress.step, "epoch": progress.epoch,
               "batch_in_epoch": progress.batch_in_epoch, "config": checkpoint.config,
               "model_name": checkpoint.model_name}  # for readers of the file without our code
    for entry in ("rng", "model", "optimizer", "ema"):
        if getattr(checkpoint, entry) is not None:
            payload[entry] = getattr(checkpoint, entry)
    return payload


def unpack(payload: Any, source: str = "the checkpoint") -> TrainingCheckpoint:
    """The inverse of `pack`, for this format version and every earlier one."""
    if not isinstance(payload, dict):
        raise UserError(f"{source} holds a {type(payload).__name__}, not a training checkpoint")
    version = payload.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(f"{source} has checkpoint format version {version!r}; this code reads versions 1 to "
                        f"{FORMAT_VERSION}. Update the code to the version that wrote it.")
    missing = [key for key in ("step", "epoch", "batch_in_epoch", "config") if key not in payload]
    if missing:
        raise UserError(f"{source} is not one of our training checkpoints (it has no {', '.join(missing)}); "
                        "to sample from a weights file, pass it to the samplers with --gpt-ckpt")
    progress = Progress(payload["step"], payload["epoch"], payload["batch_in_epoch"])
    return TrainingCheckpoint(progress, payload["config"], payload.get("rng"), payload.get("model"),
                              payload.get("optimizer"), payload.get("ema"))


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


def resume_random_state(checkpoint: TrainingCheckpoint, path: str, global_batch_size: int, rank: int,
                        world_size: int, device: torch.device) -> None:
    """Continue this rank's random stream from the checkpoint. A checkpoint saved by another number of
    processes still resumes: weights, optimizer and EMA are whole (DDP) or reshard (FSDP, through
    torch.distributed.checkpoint), and the data position counts global batches, the same at any world
    size when the global batch is. Only the per-rank streams (token orders, dropout) cannot continue:
    each rank starts a fresh one, so the run is statistically, not bitwise, the uninterrupted one."""
    states = checkpoint.rng
    if len(states) == world_size:
        set_rng_state(states[rank], device)
        return
    saved_batch = checkpoint.config["global_batch_size"]
    if saved_batch != global_batch_size:
        raise UserError(f"{path} was saved by {len(states)} processes at --global-batch-size {saved_batch}; "
                        f"resume on {world_size} processes only with --global-batch-size {saved_batch} (the data "
                        f"position counts global batches), or on {len(states)} processes (nodes x --nproc_per_node) as saved")
    # A fresh stream per (seed, step, rank): not one this run has drawn from before.
    seed = checkpoint.config["global_seed"]
    torch.manual_seed(int(np.random.default_rng([seed, checkpoint.progress.step, rank]).integers(2**62)))
    if rank == 0:
        logging.getLogger("arpg.train").warning(
            f"{path} was saved by {len(states)} processes and resumes on {world_size}: weights, optimizer, EMA "
            "and data position carry over, the random streams restart, so the run continues statistically, "
            "not bitwise, as it would have")


def tensors_of(state: Any) -> Iterable[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples (state dicts, optimizer states); a DTensor's local shard."""
    if isinstance(state, torch.Tensor):
        yield state.to_local() if hasattr(state, "to_local") else state
    elif isinstance(state, dict):
        for value in state.values():
            yield from tensors_of(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from tensors_of(value)


def all_finite(*states: Any) -> bool:
    """No NaN or infinity in any floating-point tensor of the states (one host sync per device)."""
    verdicts: Dict[torch.device, List[torch.Tensor]] = {}
    for tensor in tensors_of(states):
        if tensor.is_floating_point() and tensor.numel():
            verdicts.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    return all(bool(torch.stack(found).all()) for found in verdicts.values())


def save_checked(payload: Dict[str, Any], path: str, is_main: bool, device: torch.device) -> None:
    """Rank 0 writes `payload` atomically; every rank raises CheckpointWriteFailed if the write failed
    (the ranks agree, so none waits forever for a rank that gave up)."""
    error = None
    if is_main:
        try:
            save_atomic(payload, path)
        except OSError as caught:  # disk full, read-only or vanished folder, quota
            error = caught
    if any_rank(error is not None, device):
        raise CheckpointWriteFailed(path, error)


def prune_checkpoints(run_dir: str, keep_last: Optional[int], keep: str) -> List[str]:
    """Delete all but the keep_last checkpoints of highest step in run_dir (never `keep`, the one just
    written); None keeps all. Returns the deleted paths."""
    if keep_last is None:
        return []
    complete = sorted(checkpoints_of(run_dir), key=checkpoint_step, reverse=True)
    kept = [keep] + [path for path in complete if path != keep][:keep_last - 1]
    deleted = [path for path in complete if path not in kept]
    for path in deleted:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return deleted


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


def checkpoints_of(run_dir: str) -> List[str]:
    """The checkpoints (files and complete sharded folders) in run_dir/checkpoints, in no order."""
    return [path for path in glob.glob(os.path.join(run_dir, "checkpoints", "[0-9]*"))
            if checkpoint_step(path) is not None and (os.path.isfile(path) or is_sharded_checkpoint(path))]


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint (file or complete sharded folder) of the highest step in run_dir/checkpoints, or None."""
    paths = checkpoints_of(run_dir)
    return max(paths, key=checkpoint_step) if paths else None


def earlier_checkpoints(path: str) -> List[str]:
    """The checkpoints beside `path` (in its run's checkpoints folder) of lower step, newest first."""
    run_dir, step = os.path.dirname(os.path.dirname(os.path.abspath(path.rstrip("/")))), checkpoint_step(path)
    earlier = [other for other in checkpoints_of(run_dir) if checkpoint_step(other) < step]
    return sorted(earlier, key=checkpoint_step, reverse=True)


def load_checkpoint(path: str) -> TrainingCheckpoint:
    """A checkpoint file, or the trainer.pt of a sharded folder (whose weights load_sharded reads)."""
    if is_sharded_checkpoint(path):
        path = os.path.join(path, TRAINER_FILE)
    if not os.path.isfile(path):
        raise InputNotFound(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"could not read checkpoint {path} ({first_line(error)}): it is corrupt or not one of "
                        "our training checkpoints; resume from an earlier one") from error
    return unpack(payload, path)


def _sharded_state(model, optimizer, ema) -> Dict[str, Any]:
    """The model, optimizer and EMA state of an FSDP run, each rank holding its shards. Fused
    projections keep their fused names: splitting a sharded tensor would gather it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)  # sharded: fused names
    state = {"model": model_state, "optimizer": optimizer_state}
    if ema is not None:
        state["ema"] = get_model_state_dict(ema)
    return state


def save_sharded(path: str, model, optimizer, ema, trainer_state: TrainingCheckpoint, is_main: bool,
                 device: torch.device) -> None:
    """Every rank writes its shards into `path`.tmp; rank 0 adds trainer.pt (`trainer_state` without
    weights) and renames the folder into place, so a folder under the final name is always complete.
    A failed write on any rank raises CheckpointWriteFailed on every rank and removes `path`.tmp."""
    import torch.distributed.checkpoint as dcp

    tmp = path + ".tmp"
    if is_main and os.path.exists(tmp):
        shutil.rmtree(tmp)  # left by a run killed while saving
    barrier()
    error = None
    try:
        dcp.save(_sharded_state(model, optimizer, ema), checkpoint_id=tmp)
    except Exception as caught:  # DCP reports one rank's failed write on every rank, wrapped
        error = caught
    if is_main and error is None:
        try:
            torch.save(pack(trainer_state), os.path.join(tmp, TRAINER_FILE))
            if os.path.exists(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        except OSError as caught:
            error = caught
    if any_rank(error is not None, device):
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteFailed(path, error)


def load_sharded(path: str, model, optimizer, ema) -> None:
    """Read a folder written by save_sharded into the sharded model, optimizer and EMA (DCP reshards a
    folder saved by another number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = _sharded_state(model, optimizer, ema)
    if ema is not None and not _has_entry(path, "ema"):
        raise UserError(f"{path} holds no EMA weights; resume without --ema or from a run trained with it")
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if ema is not None:
        set_model_state_dict(ema, state["ema"])


def _has_entry(path: str, entry: str) -> bool:
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(path).read_metadata()
    return any(key.startswith(entry + ".") for key in metadata.state_dict_metadata)


def convert_sharded_checkpoint(path: str, out_path: str) -> TrainingCheckpoint:
    """Turn a sharded checkpoint folder into one file with the model and (if trained with it) EMA
    weights under their official names, progress and config, which sample_c2i.py loads strictly.
    Runs in one process, without a process group and without the optimizer state."""
    import torch.distributed.checkpoint as dcp

    if not is_sharded_checkpoint(path):
        raise UserError(f"{path} is not a sharded checkpoint folder (it needs {TRAINER_FILE} beside the shards)")
    trainer_state = load_checkpoint(path)
    cfg = saved_train_config(trainer_state.config)
    entries = ["model"] + (["ema"] if _has_entry(path, "ema") else [])
    models = {entry: build_model(cfg) for entry in entries}
    state = {entry: module_state_dict(model) for entry, model in models.items()}
    dcp.load(state, checkpoint_id=path, no_dist=True)  # into the models' own weights
    weights = {entry: model.state_dict() for entry, model in models.items()}  # official names
    converted = TrainingCheckpoint(trainer_state.progress, trainer_state.config, **weights)
    save_atomic(pack(converted), out_path)
    return converted

"""The training loop: one optimizer step, the epoch loop, checkpoints and exact resume."""
import contextlib
import dataclasses
import glob
import os
import time
from typing import Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, DistributedSampler

from autoregressive.kernels import quack_mlp
from autoregressive.train.checkpoint import (Progress, TrainingCheckpoint, all_finite, checkpoint_path,
                                             earlier_checkpoints, gather_rng_states, is_sharded_checkpoint,
                                             latest_checkpoint, load_checkpoint, load_sharded, pack, prune_checkpoints,
                                             resume_random_state, save_checked, save_sharded)
from autoregressive.train.config import TrainConfig, build_model
from autoregressive.train.ema import create_ema, update_ema
from autoregressive.train.finetune import load_initial_weights
from autoregressive.train.monitor import Monitor
from autoregressive.train.optim import build_optimizer, learning_rate_at, set_learning_rate
from autoregressive.train.parallel import (set_activation_memory_budget, shard_model, skip_gradient_sync,
                                          wrap_for_training)
from autoregressive.train.stopping import Diverged, StopAgreement, parse_deadline, stop_on_signals
from autoregressive.utils.cli import InputNotFound, UserError
from autoregressive.utils.dist import DistInfo, all_reduce_mean, any_rank, barrier
from autoregressive.utils.files import remove_stale_temporaries
from autoregressive.utils.logger import get_logger


class NonFiniteCheckpoint(UserError):
    """A checkpoint holding NaN or infinite weights or optimizer state (saved by a diverged run of older code)."""


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch at a given sample of this rank's share."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])


def find_resume_checkpoint(cfg: TrainConfig) -> Optional[str]:
    """'latest' -> newest run of this model in results_dir; a folder -> its latest checkpoint; a file."""
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":  # a preempted job restarts with the same command: fresh if nothing to resume
        runs = sorted(glob.glob(os.path.join(cfg.results_dir, f"*-{cfg.gpt_model}")))
        found = [path for path in map(latest_checkpoint, reversed(runs)) if path]
        return found[0] if found else None
    if os.path.isdir(cfg.resume):
        path = latest_checkpoint(cfg.resume) or latest_checkpoint(os.path.dirname(cfg.resume.rstrip("/")))
        if path is None:
            raise InputNotFound(f"--resume: no checkpoint in {cfg.resume}")
        return path
    return cfg.resume


def new_run_dir(cfg: TrainConfig, info: DistInfo) -> str:
    """Numbered experiment folder results_dir/NNN-model, made by rank 0 and agreed on by all ranks."""
    index = len(glob.glob(os.path.join(cfg.results_dir, "[0-9][0-9][0-9]-*")))
    if info.world_size > 1:
        box = [index]
        torch.distributed.broadcast_object_list(box, src=0)
        index = box[0]
    run_dir = os.path.join(cfg.results_dir, f"{index:03d}-{cfg.gpt_model}")
    if info.is_main:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    barrier()
    return run_dir


def check_data_fits(cfg: TrainConfig, world_size: int, dataset) -> None:
    """What a run of `cfg` on `world_size` processes refuses about `dataset`; train_c2i.py asks before it
    makes a run folder."""
    per_step = world_size * cfg.gradient_accumulation_steps
    if cfg.global_batch_size % per_step:
        raise UserError(f"--global-batch-size {cfg.global_batch_size} must divide by world size {world_size} x "
                        f"--gradient-accumulation-steps {cfg.gradient_accumulation_steps}")
    if len(dataset) < cfg.global_batch_size:
        raise UserError(f"the dataset ({len(dataset)} samples in {cfg.code_path}) is smaller than one global batch "
                        f"({cfg.global_batch_size}); lower --global-batch-size")
    tokens = getattr(dataset, "num_tokens", cfg.block_size)  # code datasets know it; a TensorDataset does not
    if tokens != cfg.block_size:
        raise UserError(f"the codes in {cfg.code_path} have {tokens} tokens per image, but --image-size "
                        f"{cfg.image_size} / --downsample-size {cfg.downsample_size} gives {cfg.block_size}; "
                        "pass the sizes the codes were extracted with")


def check_mlp_kernel_available(model: torch.nn.Module, device: torch.device) -> None:
    """One line, before any compilation, where the model's MLP kernel (ARPGConfig.mlp_kernel) cannot run here."""
    if model.config.mlp_kernel == "quack":
        reason = quack_mlp.unavailable_reason(device)
        if reason is not None:
            raise UserError(f"--mlp-kernel quack {reason}; or train without --mlp-kernel")


class Trainer:
    """Holds the model, optimizer, EMA, data and progress of one run."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, dataset, model: Optional[torch.nn.Module] = None):
        """model: the weights to start from (scripts/bench_train.py's); by default build_model(cfg) seeded
        with cfg.global_seed."""
        self.cfg, self.info, self.dataset = cfg, info, dataset
        check_data_fits(cfg, info.world_size, dataset)
        # Per-rank stream (token orders, dropout); restore() replaces it with a checkpoint's saved states.
        torch.manual_seed(cfg.global_seed * info.world_size + info.rank)
        self.micro_batch = cfg.global_batch_size // (info.world_size * cfg.gradient_accumulation_steps)
        # The same initial weights on every rank (FSDP keeps each rank's shard of its own copy; DDP
        # would broadcast rank 0's), without touching the per-rank random stream.
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.global_seed)
                model = build_model(cfg)
            if cfg.init_from:
                load_initial_weights(model, cfg.init_from)
        self.model = model.to(info.device)
        check_mlp_kernel_available(self.model, info.device)
        self.ema = create_ema(self.model) if cfg.ema else None
        self.sharded = cfg.data_parallel == "fsdp"
        # Compile and wrap before the optimizer exists: FSDP replaces the parameters by sharded ones.
        compile_model = cfg.compile and info.device.type == "cuda"
        if compile_model and cfg.activation_memory_budget < 1.0:
            set_activation_memory_budget(cfg.activation_memory_budget)
        self.train_model = wrap_for_training(self.model, cfg.data_parallel, info, compile_model=compile_model,
                                             precision_policy=cfg.precision_policy,
                                             deterministic=cfg.deterministic)
        if self.sharded and self.ema is not None:
            shard_model(self.ema, self.info.device)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas, info.device.type == "cuda")
        self.sampler = ResumableSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                        seed=cfg.global_seed, drop_last=True)
        self.loader = DataLoader(dataset, batch_size=self.micro_batch, sampler=self.sampler, drop_last=True,
                                 num_workers=cfg.num_workers, pin_memory=info.device.type == "cuda",
                                 # its own generator: creating an iterator must not draw from the global
                                 # RNG, or a run resumed mid-epoch would drift from an uninterrupted one
                                 generator=torch.Generator().manual_seed(cfg.global_seed))
        self.steps_per_epoch = len(self.loader) // cfg.gradient_accumulation_steps  # >= 1: check_data_fits
        self.progress = Progress()
        use_amp = info.device.type == "cuda" and cfg.mixed_precision != "none"
        dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
        self.autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if use_amp else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.mixed_precision == "fp16")
        self.grad_norm: Optional[torch.Tensor] = None  # of the last optimizer step, before clipping
        self.stopped_by: Optional[str] = None  # why the run ended before its last step (signal, time limit)

    def checkpoint(self, with_weights: bool) -> TrainingCheckpoint:
        """Progress, config and every rank's RNG (collective), with the weights and optimizer if asked."""
        checkpoint = TrainingCheckpoint(dataclasses.replace(self.progress), dataclasses.asdict(self.cfg),
                                        rng=gather_rng_states(self.info.device))
        if with_weights:
            checkpoint.model, checkpoint.optimizer = self.model.state_dict(), self.optimizer.state_dict()
            checkpoint.ema = None if self.ema is None else self.ema.state_dict()
        return checkpoint

    def restore(self, path: str) -> None:
        sharded_file = is_sharded_checkpoint(path)
        if sharded_file != self.sharded:
            written, wanted = ("fsdp", "ddp") if sharded_file else ("ddp", "fsdp")
            raise UserError(f"{path} was written by a --data-parallel {written} run; resume it with "
                            f"--data-parallel {written} (this run uses {wanted})")
        checkpoint = load_checkpoint(path)
        if checkpoint.rng is None or (not self.sharded and checkpoint.optimizer is None):
            raise UserError(f"{path} holds no optimizer or RNG state (a converted file, for sampling); resume "
                            "from a checkpoint in the run's checkpoints folder")
        if self.sharded:
            load_sharded(path, self.model, self.optimizer, self.ema)
        else:
            self.model.load_state_dict(checkpoint.model, strict=True)
            self.optimizer.load_state_dict(checkpoint.optimizer)
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint.ema if checkpoint.ema is not None else checkpoint.model,
                                         strict=True)
        if not self.state_is_finite():
            raise NonFiniteCheckpoint(f"{path} holds non-finite weights or optimizer state (saved by a run that "
                                      "diverged); resume from an earlier checkpoint of that run with a lower --lr")
        self.progress = checkpoint.progress
        resume_random_state(checkpoint, path, self.cfg.global_batch_size, self.info.rank, self.info.world_size,
                            self.info.device)

    def state_is_finite(self) -> bool:
        """No NaN or infinity in the weights, EMA or optimizer state of any rank (collective)."""
        ema = None if self.ema is None else self.ema.state_dict()
        mine = all_finite(self.model.state_dict(), self.optimizer.state_dict()["state"], ema)
        return not any_rank(not mine, self.info.device)

    def save(self, run_dir: str) -> str:
        """Write this step's checkpoint (every rank takes part), then keep only the --keep-last newest.
        Raises Diverged rather than write non-finite state, CheckpointWriteFailed if the write fails."""
        path = checkpoint_path(run_dir, self.progress.step, sharded=self.sharded)
        if not self.state_is_finite():
            raise Diverged(f"training diverged: the weights or optimizer state are non-finite at step "
                           f"{self.progress.step}; not saved. Resume from the last checkpoint with a lower --lr")
        if self.sharded:
            save_sharded(path, self.model, self.optimizer, self.ema, self.checkpoint(with_weights=False),
                         self.info.is_main, self.info.device)
        else:  # every rank takes part in gathering the RNG states
            save_checked(pack(self.checkpoint(with_weights=True)), path, self.info.is_main, self.info.device)
        if self.info.is_main:
            prune_checkpoints(run_dir, self.cfg.keep_last, keep=path)
        barrier()
        return path

    def optimizer_step(self, batches) -> torch.Tensor:
        """Forward/backward over the micro-batches of one step, clip, step, EMA; returns the mean loss."""
        cfg, total = self.cfg, torch.zeros((), device=self.info.device)
        for index, batch in enumerate(batches):
            # (codes, labels) or, with --condition-path, (codes, labels, condition maps)
            codes, labels, *condition_map = (part.to(self.info.device, non_blocking=True) for part in batch)
            extra = {"condition_map": condition_map[0]} if condition_map else {}
            with skip_gradient_sync(self.train_model, skip=index < len(batches) - 1):
                with self.autocast():
                    _, loss = self.train_model(codes, labels, targets=codes, return_logits=not cfg.chunked_loss,
                                               **extra)
                self.scaler.scale(loss / len(batches)).backward()
            total += loss.detach() / len(batches)
        self.scaler.unscale_(self.optimizer)
        # Without clipping, an infinite bound only measures the norm (the gradients are multiplied by 1.0).
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            update_ema(self.ema, self.model, cfg.ema_decay)
        return total

    def steps(self, total_steps: int) -> Iterator[Tuple[torch.Tensor, float]]:
        """Take optimizer steps from the current progress until step `total_steps`, yielding each step's
        (mean loss, learning rate) once progress counts it: the one training iteration (epoch order, data
        position, learning rate at the fractional epoch, micro-batches) that train() and
        scripts/check_precision.py share."""
        cfg, progress, accum = self.cfg, self.progress, self.cfg.gradient_accumulation_steps
        while progress.step < total_steps:
            self.sampler.set_epoch(progress.epoch)
            if hasattr(self.dataset, "set_epoch"):  # datasets whose augmentation pick follows the epoch
                self.dataset.set_epoch(progress.epoch)
            self.sampler.start = progress.batch_in_epoch * accum * self.micro_batch
            batches = iter(self.loader)
            while progress.step < total_steps:
                epoch_float = progress.epoch + progress.batch_in_epoch / self.steps_per_epoch
                lr = learning_rate_at(epoch_float, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs, cfg.lr_schedule)
                set_learning_rate(self.optimizer, lr)
                try:
                    loss = self.optimizer_step([next(batches) for _ in range(accum)])
                except torch.cuda.OutOfMemoryError as error:
                    raise UserError(out_of_memory_advice(cfg, self.micro_batch)) from error
                progress.step, progress.batch_in_epoch = progress.step + 1, progress.batch_in_epoch + 1
                end_of_epoch = progress.batch_in_epoch == self.steps_per_epoch
                if end_of_epoch:
                    progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
                yield loss, lr
                if end_of_epoch:
                    break


def train(cfg: TrainConfig, info: DistInfo, dataset, run_dir: str, resume_path: Optional[str]) -> Trainer:
    """Run (or continue) training until cfg.epochs or cfg.max_steps; returns the trainer."""
    logger = get_logger("arpg.train", run_dir, info.rank)
    trainer = Trainer(cfg, info, dataset)
    if resume_path:
        resume_path = restore_newest_finite(trainer, resume_path, logger, fall_back=picks_a_checkpoint(cfg.resume))
        logger.info(f"resumed from {resume_path} at step {trainer.progress.step}")
    if info.is_main and remove_stale_temporaries(os.path.join(run_dir, "checkpoints")):
        logger.info("removed the partial checkpoint files of a killed run")  # only rank 0 writes these files
    logger.info(f"{cfg.gpt_model}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters, "
                f"{len(dataset):,} samples, {trainer.steps_per_epoch} steps per epoch, run folder {run_dir}")
    wandb_run = start_wandb(cfg, run_dir, logger) if info.is_main and cfg.wandb else None
    total_steps = min(cfg.max_steps or 10**12, cfg.epochs * trainer.steps_per_epoch)
    progress_bar = make_progress_bar(info, total_steps, trainer.progress.step)
    running, logged_steps, start_time = torch.zeros((), device=info.device), 0, time.time()
    agreement = StopAgreement(info.device, cfg.time_limit, parse_deadline(cfg.deadline),
                              check_grad_norm=not trainer.scaler.is_enabled())
    monitor = Monitor(cfg, info, run_dir, logger, wandb_run, trainer.progress.step, agreement.requested)
    # Closed on the way out, also by an error: the error's line must not land on the bar's line.
    with progress_bar if progress_bar is not None else contextlib.nullcontext(), \
            stop_on_signals(agreement, cfg.stop_signal):
        for loss, lr in trainer.steps(total_steps):
            running, logged_steps, step = running + loss, logged_steps + 1, trainer.progress.step
            if progress_bar is not None:
                progress_bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                seconds = time.time() - start_time
                log_step(logger, wandb_run, trainer, running / logged_steps, lr, logged_steps * cfg.global_batch_size / seconds)
                running, logged_steps, start_time = torch.zeros((), device=info.device), 0, time.time()
            due = step % cfg.ckpt_every == 0 or step == total_steps
            stop = agreement.after_step(step, loss, trainer.grad_norm, settle=due)  # raises Diverged
            trainer.stopped_by = stop if step < total_steps else None
            if due or trainer.stopped_by:
                logger.info(f"saved {trainer.save(run_dir)}")
            if trainer.stopped_by:
                logger.info(f"stopped at step {step} on {trainer.stopped_by}; to continue, run the same command "
                            "with --resume")
                agreement.checkpoint_written()
                return trainer
            start_time += monitor.after_step(trainer)  # grids and evaluations do not count as training time
    return trainer


def picks_a_checkpoint(resume: Optional[str]) -> bool:
    """Whether --resume leaves the choice of checkpoint to us ('latest' or a run folder), not names a file."""
    return resume == "latest" or (resume is not None and os.path.isdir(resume) and not is_sharded_checkpoint(resume))


def restore_newest_finite(trainer: Trainer, path: str, logger, fall_back: bool) -> str:
    """Restore `path`; if it holds non-finite state and `fall_back`, the newest earlier finite checkpoint of
    the same run instead (our runs never save one, older code did). Returns the path restored."""
    for candidate in [path] + (earlier_checkpoints(path) if fall_back else []):
        try:
            trainer.restore(candidate)
            return candidate
        except NonFiniteCheckpoint:
            if not fall_back:
                raise
            logger.warning(f"skipping {candidate}: non-finite weights or optimizer state (a diverged run)")
    raise NonFiniteCheckpoint(f"no checkpoint beside {path} has finite weights and optimizer state; "
                              "start a new run (without --resume)")


def out_of_memory_advice(cfg: TrainConfig, micro_batch: int) -> str:
    """What to do when a step does not fit in GPU memory: the same global batch in smaller pieces, or
    recomputation, instead of a traceback (the official recipe's 1024 on 4 GPUs is 256 per GPU, which does
    not fit ARPG-L on 80 GB)."""
    accum = cfg.gradient_accumulation_steps
    return (f"out of GPU memory at {micro_batch} images per GPU per forward pass ({cfg.gpt_model}): pass "
            f"--gradient-accumulation-steps {2 * accum} (the same --global-batch-size {cfg.global_batch_size} in "
            "half-size micro-batches), or recompute activations with --activation-memory-budget "
            "0.75 or --grad-checkpointing; checkpoints already written are kept, resume with --resume")


def log_step(logger, wandb_run, trainer: Trainer, loss: torch.Tensor, lr: float, images_per_second: float) -> None:
    loss_value = all_reduce_mean(loss).item()
    memory = ""
    if trainer.info.device.type == "cuda":
        memory = f", peak memory {torch.cuda.max_memory_allocated(trainer.info.device) / 2**30:.1f} GiB"
    logger.info(f"step {trainer.progress.step:07d} loss {loss_value:.4f} lr {lr:.2e} "
                f"{images_per_second:.1f} img/s{memory}")
    if wandb_run is not None:
        wandb_run.log({"loss": loss_value, "lr": lr, "img_per_s": images_per_second}, step=trainer.progress.step)


def make_progress_bar(info: DistInfo, total: int, done: int):
    if not info.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True, mininterval=5)


def start_wandb(cfg: TrainConfig, run_dir: str, logger):
    """wandb only when asked for; a missing package or no network must not stop training."""
    try:
        import wandb

        return wandb.init(project="arpg", name=os.path.basename(run_dir), dir=run_dir, config=dataclasses.asdict(cfg))
    except Exception as error:  # wandb raises many kinds of errors offline
        logger.warning(f"wandb disabled: {error}")
        return None

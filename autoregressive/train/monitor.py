"""Watching a run: sample grids and FID (the digits judge for the demo model) every few steps, without
changing what the run trains.

--sample-every N: rank 0 samples a fixed grid (fixed classes and seed) into run_dir/grids/NNNNNNN.png.
--eval-every N: every rank samples its share of --eval-num-images, turns it into features, and rank 0
scores them, logs one line, appends a row to run_dir/metrics.csv and redraws run_dir/metrics.png. Sample i
has class i mod num_classes and batch k (samples k*B .. k*B+B-1, B = --eval-batch-size) runs on rank
k mod world size with the randomness of (--global-seed, k*B), as sample_c2i_ddp.py draws it: the images
do not depend on the number of processes.

Invisible to training: samples come from a copy of the weights (the EMA's when kept; bf16 on CUDA, as
sample_c2i_ddp.py's default; eval mode), drawn with private generators, and the global CPU/CUDA/numpy/
random states are put back afterwards; the trained modules, optimizer and data loader are not touched.
A failed evaluation logs one line and training goes on, unless --stop-on-eval-error.
"""
import contextlib
import copy
import logging
import math
import os
import random
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from autoregressive.fast_generate import make_sampler
from autoregressive.render import tokens_to_images, tokens_to_view
from autoregressive.sampling import SamplingConfig, batch_generator
from autoregressive.train.checkpoint import rng_state, set_rng_state
from autoregressive.train.metrics_log import MetricsLog
from autoregressive.utils.cli import InputNotFound, UserError
from autoregressive.utils.dist import DistInfo, is_distributed
from autoregressive.utils.files import write_atomic
from autoregressive.weights import first_line

IMAGENET_GRID_CLASSES = (207, 360, 387, 974, 88, 979, 417, 279)  # sample_c2i.py's classes
GRID_SAMPLES_PER_CLASS = 4  # one row per class
MAX_GRID_CLASSES = 10  # up to this many classes, the grid shows them all


def grid_classes(num_classes: int) -> List[int]:
    if num_classes <= MAX_GRID_CLASSES:
        return list(range(num_classes))
    if max(IMAGENET_GRID_CLASSES) < num_classes:
        return list(IMAGENET_GRID_CLASSES)
    return [index * num_classes // len(IMAGENET_GRID_CLASSES) for index in range(len(IMAGENET_GRID_CLASSES))]


@contextlib.contextmanager
def untouched_random_state(device: torch.device):
    """Whatever runs inside, the global torch (CPU and CUDA), numpy and random states are as before."""
    torch_state, numpy_state, python_state = rng_state(device), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        set_rng_state(torch_state, device)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def sampling_copy(source: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A frozen copy of the weights to sample from, in eval mode; bf16 on CUDA."""
    with torch.no_grad():
        model = copy.deepcopy(source)
    return model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval().requires_grad_(False)


def my_batches(total: int, batch: int, rank: int, world_size: int) -> range:
    """The batch numbers k of this rank: k*batch is the first sample of batch k."""
    return range(rank, math.ceil(total / batch), world_size)


def sample_share(sampler, sampling: SamplingConfig, total: int, batch: int, num_classes: int, seed: int,
                 rank: int, world_size: int, device, consume: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Sample this rank's batches; consume((b,) long sample indices, (b, N) tokens) for each. The last
    batch is sampled whole (the same shapes as the others) and cut to the samples below total."""
    for k in my_batches(total, batch, rank, world_size):
        first = k * batch
        indices = torch.arange(first, first + batch, device=device)
        tokens = sampler(indices % num_classes, sampling, batch_generator(device, seed, first))
        kept = min(batch, total - first)
        consume(indices[:kept].cpu(), tokens[:kept])


def gather_rows(rows: Dict[str, np.ndarray]) -> Optional[Dict[str, np.ndarray]]:
    """Every rank's per-sample rows (an "index" entry among them), in sample order, on rank 0; None elsewhere.
    A rank with no samples (more ranks than batches) sends its empty "index" alone."""
    parts = [rows]
    if is_distributed():
        parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(rows, parts, dst=0)
        if dist.get_rank() != 0:
            return None
    parts = [part for part in parts if len(part["index"])]
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    order = np.argsort(merged["index"], kind="stable")
    return {key: value[order] for key, value in merged.items()}


def agreed_errors(error: Optional[str], from_main_only: bool = False) -> List[str]:
    """The error lines of all ranks (or rank 0's alone), the same list on every rank: all ranks then skip
    or stop together, and none waits in a collective that the others left."""
    errors = [error]
    if is_distributed():
        if from_main_only:
            dist.broadcast_object_list(errors, src=0)
        else:
            errors = [None] * dist.get_world_size()
            dist.all_gather_object(errors, error)
    return [line for line in errors if line]


def attempt(what: str, step: int, job: Callable[[], None]) -> Optional[str]:
    """Run job(); its error becomes one line. Every kind of error: an evaluation must not end the run."""
    try:
        job()
        return None
    except Exception as error:  # noqa: BLE001
        advice = "; lower --eval-batch-size" if isinstance(error, torch.cuda.OutOfMemoryError) else ""
        return f"step {step:07d}: {what} failed ({type(error).__name__}: {first_line(error)}){advice}"


class Monitor:
    """Called once per optimizer step (after_step); acts at the steps --sample-every and --eval-every name."""

    def __init__(self, cfg, info: DistInfo, run_dir: str, logger: logging.Logger, wandb_run, start_step: int):
        """cfg: the run's TrainConfig. start_step: the step the run starts or resumes at."""
        self.cfg, self.info, self.run_dir, self.logger, self.wandb_run = cfg, info, run_dir, logger, wandb_run
        self.sampling = SamplingConfig(num_steps=cfg.eval_num_steps, cfg_scale=cfg.eval_cfg_scale)
        self.metrics = MetricsLog(run_dir, start_step) if info.is_main and cfg.eval_every else None
        self._vq, self._judge = None, None
        if cfg.eval_every and cfg.eval_ref_batch and not os.path.isfile(cfg.eval_ref_batch):
            logger.warning(f"--eval-ref-batch {cfg.eval_ref_batch} not found: every evaluation fails until it exists")

    def after_step(self, trainer) -> float:
        """Grid and evaluation if due at trainer.progress.step; returns the seconds they took."""
        step, cfg = trainer.progress.step, self.cfg
        grid_due = cfg.sample_every > 0 and step % cfg.sample_every == 0
        eval_due = cfg.eval_every > 0 and step % cfg.eval_every == 0
        if not (grid_due or eval_due):
            return 0.0
        start, source = time.time(), trainer.ema if trainer.ema is not None else trainer.model
        with untouched_random_state(self.info.device):
            errors = self._watch(source, step, grid_due, eval_due)
        if self.info.device.type == "cuda":
            torch.cuda.empty_cache()  # the copy's and the graphs' memory goes back to training
        if errors and cfg.stop_on_eval_error:
            raise UserError(f"{errors[0]}; the run stops (--stop-on-eval-error); checkpoints already written are kept")
        for line in errors:
            self.logger.warning(f"{line}; training goes on (--stop-on-eval-error would stop it)")
        return time.time() - start

    def _watch(self, source: torch.nn.Module, step: int, grid_due: bool, eval_due: bool) -> List[str]:
        """The grid and the evaluation; returns the error lines, the same on every rank."""
        model: List[torch.nn.Module] = []
        copy_error = attempt("copying the weights to sample from", step,
                             lambda: model.append(sampling_copy(source, self.info.device)))
        grid_error = None
        if grid_due and self.info.is_main and model:
            grid_error = attempt("the sample grid", step, lambda: self.write_grid(model[0], step))
        errors = agreed_errors(grid_error or (None if eval_due else copy_error))
        if eval_due:
            errors += self.evaluate(model[0] if model else None, step, copy_error)
        return errors

    def render(self) -> Callable[[torch.Tensor], np.ndarray]:
        """(B, N) tokens -> (B, H, W, 3) uint8 numpy; the tokenizer is loaded on first use and kept."""
        vq = self.tokenizer()
        return lambda tokens: tokens_to_images(tokens, self.grid_size, vq, self.vocab_size).numpy()

    def tokenizer(self):
        """The VQ decoder (--vq-ckpt, or the released VQ-16 by name for VQ-16 codes); None for models
        whose tokens are grey levels (the digits demo, small-vocabulary test models)."""
        cfg = self.cfg
        if cfg.dataset == "digits" or (cfg.vq_ckpt is None and cfg.vocab_size <= 256):
            return None
        if self._vq is None:
            from autoregressive.pretrained import resolve_checkpoint
            from autoregressive.weights import load_vq

            self._vq = load_vq(cfg.vq_model, resolve_checkpoint(cfg.vq_ckpt, cfg.vq_model), self.info.device)
        return self._vq

    @property
    def grid_size(self) -> int:
        return self.cfg.image_size // self.cfg.downsample_size

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def write_grid(self, model: torch.nn.Module, step: int) -> None:
        from torchvision.utils import save_image

        start, device = time.time(), self.info.device
        labels = torch.tensor(grid_classes(self.cfg.num_classes), device=device)
        labels = labels.repeat_interleave(GRID_SAMPLES_PER_CLASS)
        tokens = make_sampler(model)(labels, self.sampling, torch.Generator(device).manual_seed(self.cfg.global_seed))
        pixels = tokens_to_view(tokens, self.grid_size, self.tokenizer(), self.vocab_size)
        path = os.path.join(self.run_dir, "grids", f"{step:07d}.png")
        write_atomic(path, lambda tmp: save_image(pixels, tmp, nrow=GRID_SAMPLES_PER_CLASS, padding=2))
        self.logger.info(f"step {step:07d} sample grid {path} ({time.time() - start:.1f} s)")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"samples": wandb.Image(path)}, step=step)

    def judge(self):
        if self._judge is None:
            if self.cfg.dataset == "digits":
                from evaluations.digits import DigitsJudge

                self._judge = DigitsJudge()
            else:
                from evaluations.c2i.judge import InceptionJudge

                cfg = self.cfg
                self._judge = InceptionJudge(cfg.eval_ref_batch, self.render(), cfg.inception_weights,
                                             self.info.device, cfg.eval_batch_size, cfg.eval_precision_recall)
        return self._judge

    def evaluate(self, model: Optional[torch.nn.Module], step: int, copy_error: Optional[str]) -> List[str]:
        """Every rank samples and featurises its share; rank 0 scores and records. Returns the error lines,
        the same on every rank."""
        start, rows = time.time(), {}
        local_error = copy_error or attempt("the evaluation", step, lambda: rows.update(self.my_rows(model)))
        errors = agreed_errors(local_error)
        if errors:
            return errors
        gathered = gather_rows(rows)
        record_error = None
        if self.info.is_main:
            record_error = attempt("the evaluation", step, lambda: self.record(step, gathered, start))
        return agreed_errors(record_error, from_main_only=True)

    def my_rows(self, model: torch.nn.Module) -> Dict[str, np.ndarray]:
        """This rank's samples as per-sample rows: "index" (global sample index) and the judge's features."""
        cfg = self.cfg
        if cfg.eval_ref_batch and not os.path.isfile(cfg.eval_ref_batch):  # before sampling in vain
            raise InputNotFound(f"--eval-ref-batch {cfg.eval_ref_batch}: not found")
        judge, parts = self.judge(), {"index": [np.zeros(0, dtype=np.int64)]}

        def consume(indices: torch.Tensor, tokens: torch.Tensor) -> None:
            parts["index"].append(indices.numpy())
            for key, value in judge.features(tokens).items():
                parts.setdefault(key, []).append(value)

        sample_share(make_sampler(model), self.sampling, cfg.eval_num_images, cfg.eval_batch_size, cfg.num_classes,
                     cfg.global_seed, self.info.rank, self.info.world_size, self.info.device, consume)
        return {key: np.concatenate(values) for key, values in parts.items()}

    def record(self, step: int, rows: Dict[str, np.ndarray], start: float) -> None:
        labels = rows["index"] % self.cfg.num_classes
        metrics = self.judge().score(rows, labels)
        self.metrics.add(step, metrics)
        figures = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        self.logger.info(f"step {step:07d} eval of {len(labels)} samples: {figures} ({time.time() - start:.1f} s)")
        if self.wandb_run is not None:
            self.wandb_run.log({f"eval/{name}": value for name, value in metrics.items()}, step=step)

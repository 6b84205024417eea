"""Ending a run early without losing work: preemption signals, a time limit, and divergence.

Order of events when a scheduler preempts a torchrun job (SLURM: SIGTERM to every process of the job,
or a warning signal some minutes ahead; SIGKILL after a grace period):
1. The signal reaches the launcher, some workers, or all of them. A worker's handler only records it;
   the torchrun launcher forwards SIGTERM (and the signals in its --signals-to-handle) to every worker,
   then waits its --shutdown-timeout (30 s by default) before it sends SIGKILL.
2. At every step boundary each rank contributes (stop requested?, loss finite?, gradient norm finite?)
   to one max all-reduce, so all ranks learn of a request on any rank together and stop after the same
   step (at most one step after the request: the reduce of step n is read at the end of step n + 1,
   so the loop never waits on the GPU for it).
3. All ranks write one checkpoint (atomically, as at any other step), leave the process group, and
   exit with STOPPED_EXIT_CODE; `--resume` continues from it as from any other checkpoint.
4. A launcher that dies meanwhile (one without a handler for the signal is killed by it) leaves its
   workers orphaned: the orphan watchdog (utils/watchdog.py) then waits for the stop under way to
   finish its checkpoint before it ends the worker, instead of cutting the write short.
The grace period must cover the rest of one step plus one checkpoint write.
"""
import contextlib
import datetime
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from autoregressive.utils import watchdog
from autoregressive.utils.cli import UserError
from autoregressive.utils.dist import is_distributed

STOPPED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: a checkpoint was written, the same command with --resume continues
DIVERGED_EXIT_CODE = 3  # a non-finite loss or gradient norm: resume from the last checkpoint with a lower --lr
STOP_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGINT", "none")  # choices of --stop-signal (SIGTERM always)
TIME_LIMIT, SIGNAL = 1.0, 2.0  # stop reasons in the reduced flags; the larger one wins the max
CHECKPOINT_WAIT_SECONDS = 600.0  # an orphaned worker waits this long for the stop's checkpoint


class Diverged(UserError):
    """The loss or the gradient norm became non-finite; nothing from this step on is saved."""
    exit_code = DIVERGED_EXIT_CODE


@dataclass
class _Received:
    """What the signal handler saw (the handler only records; the loop acts at the next step boundary)."""
    signal_name: Optional[str] = None
    checkpoint_done: threading.Event = field(default_factory=threading.Event)


def parse_deadline(text: Optional[str]) -> Optional[float]:
    """--deadline as a Unix time: ISO 8601 ('2030-01-31T08:00', local time unless it carries an offset)."""
    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(f"--deadline {text!r} is not a date and time; write it as 2030-01-31T08:00 (local time) "
                        "or 2030-01-31T08:00+01:00") from None


class StopAgreement:
    """Per step, the ranks agree (one max all-reduce of three flags) whether to stop, and why."""

    def __init__(self, device: torch.device, time_limit_minutes: Optional[float] = None,
                 deadline: Optional[float] = None, check_grad_norm: bool = True):
        """time_limit_minutes: stop this long after now; deadline: stop at this Unix time (first one wins).
        check_grad_norm: False under fp16 loss scaling, whose skipped steps have infinite gradients."""
        limits = [limit for limit in (deadline, None if time_limit_minutes is None
                                      else time.time() + 60 * time_limit_minutes) if limit is not None]
        self.stop_at = min(limits) if limits else None
        self.device, self.check_grad_norm = device, check_grad_norm
        self.received = _Received()
        self.pending: List[Tuple[int, torch.Tensor]] = []  # (step, reduced flags) not read yet

    def _request(self) -> float:
        if self.received.signal_name is not None:
            return SIGNAL
        return TIME_LIMIT if self.stop_at is not None and time.time() >= self.stop_at else 0.0

    def requested(self) -> bool:
        """This rank received a stop signal or reached the time limit (not yet agreed with the others)."""
        return self._request() > 0

    def after_step(self, step: int, loss: torch.Tensor, grad_norm: Optional[torch.Tensor],
                   settle: bool = False) -> Optional[str]:
        """Record step `step` and read what is known: the reason to stop now, or None.

        Without `settle`, this step's reduced flags are read at the next call (no host sync); a stop
        request or `settle` reads them now, since a checkpoint follows and must come from a finite step.
        Raises Diverged naming the first step whose loss or gradient norm was non-finite on some rank."""
        flags = torch.zeros(3, device=self.device)
        flags[0] = self._request()  # a fill kernel: no host-to-device copy that would wait for the GPU
        flags[1] = (~torch.isfinite(loss.detach().float())).float()
        if grad_norm is not None and self.check_grad_norm:
            if hasattr(grad_norm, "full_tensor"):  # FSDP's norm is a DTensor, each rank holding a partial sum
                grad_norm = grad_norm.full_tensor()
            flags[2] = (~torch.isfinite(grad_norm.detach().float())).float()
        if is_distributed():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.pending.append((step, flags))
        reason = self._read(len(self.pending) - 1)
        if reason is not None or settle:
            reason = self._read(len(self.pending)) or reason
        return reason

    def _read(self, count: int) -> Optional[str]:
        """Read (and forget) the oldest `count` pending flags."""
        reason, entries, self.pending = None, self.pending[:count], self.pending[count:]
        for step, flags in entries:
            request, bad_loss, bad_norm = flags.tolist()
            if bad_loss or bad_norm:
                what = "loss" if bad_loss else "gradient norm"
                raise Diverged(f"training diverged: the {what} became non-finite at step {step} (on at least one "
                               "rank); nothing from that step on was saved. Resume from the last checkpoint with a "
                               "lower --lr (e.g. half): --resume plus the same flags")
            if request:
                reason = "a stop signal" if request == SIGNAL else "the time limit"
        return reason

    def checkpoint_written(self) -> None:
        """The stop's checkpoint is complete: an orphaned worker may now end. It does not return then: the
        dead launcher took the rendezvous store along, which leaving the process group would need."""
        self.received.checkpoint_done.set()
        if watchdog.launcher_gone():
            threading.Event().wait()  # the watchdog ends the process


@contextlib.contextmanager
def stop_on_signals(agreement: StopAgreement, stop_signal: str = "SIGUSR1") -> Iterator[StopAgreement]:
    """Record SIGTERM and `stop_signal` (a name from STOP_SIGNALS) in `agreement` while inside; the previous
    handlers come back on the way out. Must run in the main thread (Python delivers signals there)."""
    received = agreement.received

    def record(signum, _frame):  # no logging here: the handler may interrupt the main thread inside a log call
        if received.signal_name is None:
            received.signal_name = signal.Signals(signum).name

    def wait_for_checkpoint() -> None:
        if received.signal_name is not None:  # a stop is under way: let its checkpoint finish
            received.checkpoint_done.wait(CHECKPOINT_WAIT_SECONDS)

    previous = {name: signal.signal(getattr(signal, name), record) for name in _signal_names(stop_signal)}
    watchdog.hold_exit(wait_for_checkpoint)
    try:
        yield agreement
    finally:
        watchdog.release_exit(wait_for_checkpoint)
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _signal_names(stop_signal: str) -> List[str]:
    return ["SIGTERM"] + ([stop_signal] if stop_signal not in ("none", "SIGTERM") else [])


def ignore_stop_signals(stop_signal: str) -> None:
    """For a process whose run stopped with a complete checkpoint and that now leaves the process group and
    exits with STOPPED_EXIT_CODE: torchrun SIGTERMs the other workers as soon as one exits with a non-zero
    code, which would turn their exit into a death by signal. Call before leaving the group, so that no
    rank exits before every rank ignores them."""
    for name in _signal_names(stop_signal):
        signal.signal(getattr(signal, name), signal.SIG_IGN)

"""Stop a torchrun worker whose launcher has died.

A worker killed together with its launcher is the normal case, but a launcher killed alone (SIGKILL, OOM
killer, a lost node agent) leaves its workers running: they would train to the end unsupervised and keep
writing checkpoints into a run folder that a restarted job writes to as well. The launcher is the
worker's parent process, so a worker notices that its parent changed and ends itself.

We poll the parent id instead of using Linux's PR_SET_PDEATHSIG: that signal fires when the parent
*thread* that started us exits, which need not be the launcher's end, and it exists on Linux only.
"""
import os
import sys
import threading
import time
from typing import Callable, List

from autoregressive.utils.files import stop_writes

POLL_SECONDS = 1.0
WRITE_GRACE_SECONDS = 60.0  # a checkpoint write under way may finish; none starts after the launcher is gone
EXIT_CODE = 1

_started = False
_launcher_pid = None
_exit_holds: List[Callable[[], None]] = []  # each blocks until work that must not be cut short is done


def hold_exit(wait: Callable[[], None]) -> None:
    """Have an orphaned worker call wait() (which bounds its own waiting) before it ends: a stop that a
    signal started must finish its checkpoint, even when the same signal killed the launcher."""
    _exit_holds.append(wait)


def release_exit(wait: Callable[[], None]) -> None:
    _exit_holds.remove(wait)


def launcher_gone() -> bool:
    """Whether this worker's torchrun launcher has died (the watchdog then ends the process within a poll)."""
    return _launcher_pid is not None and os.getppid() != _launcher_pid


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run / elastic agent) sets these in every worker it starts."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def stop_when_orphaned(launcher_pid: int, poll_seconds: float = POLL_SECONDS) -> None:
    """Block until the parent is no longer launcher_pid, then end this process (never returns then)."""
    while os.getppid() == launcher_pid:
        time.sleep(poll_seconds)
    rank = os.environ.get("RANK", "?")
    print(f"rank {rank} (pid {os.getpid()}): the torchrun launcher (pid {launcher_pid}) is gone; stopping this "
          "worker so it does not run on unsupervised. Restart the job with the same command to resume.",
          file=sys.stderr, flush=True)
    for wait in list(_exit_holds):
        wait()
    stop_writes(WRITE_GRACE_SECONDS)
    os._exit(EXIT_CODE)  # the main thread may sit in a collective that never returns: no clean shutdown


def install_orphan_watchdog() -> bool:
    """Under torchrun, start (once per process) a daemon thread that ends this worker within about
    POLL_SECONDS of its launcher's death. Returns whether a watchdog runs."""
    global _started, _launcher_pid
    if _started:
        return True
    if not launched_by_torchrun():
        return False
    launcher_pid = _launcher_pid = os.getppid()
    threading.Thread(target=stop_when_orphaned, args=(launcher_pid,), name="orphan-watchdog", daemon=True).start()
    _started = True
    return True

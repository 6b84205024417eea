"""Atomic file writes: a crash or a kill never leaves a half-written file under the final name; and
output folders that a failed run leaves empty are removed again."""
import contextlib
import os
import threading
from typing import Callable, Iterator

_writes = threading.Condition()
_writes_in_flight = 0
_writes_stopped = False


@contextlib.contextmanager
def _counted_write():
    """Count a write while it runs; once stop_writes() was called, wait forever (the process is ending)."""
    global _writes_in_flight
    with _writes:
        _writes.wait_for(lambda: not _writes_stopped)
        _writes_in_flight += 1
    try:
        yield
    finally:
        with _writes:
            _writes_in_flight -= 1
            _writes.notify_all()


def stop_writes(timeout: float) -> bool:
    """Let no new atomic write begin and wait up to `timeout` seconds for those under way to finish,
    so a process about to end leaves no temporary file behind. True if none is left running."""
    global _writes_stopped
    with _writes:
        _writes_stopped = True
        return _writes.wait_for(lambda: _writes_in_flight == 0, timeout)


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temporary file beside path, then rename it into place.

    The temporary name keeps path's extension (np.save and np.savez would add one otherwise) and the
    process id, so processes and threads writing different files never collide."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    stem, extension = os.path.splitext(path)
    tmp = f"{stem}.tmp{os.getpid()}{extension}"
    with _counted_write():
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def output_folder(path: str) -> Iterator[str]:
    """os.makedirs(path); if the block raises, remove again the folders made here that are still empty
    (a refused run leaves nothing behind; finished files, and the folders holding them, stay)."""
    made, folder = [], os.path.abspath(path)
    while not os.path.exists(folder):
        made.append(folder)  # deepest first
        folder = os.path.dirname(folder)
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):  # not empty, or another process removed it already
                os.rmdir(folder)
        raise

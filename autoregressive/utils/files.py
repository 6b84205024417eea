"""Atomic file writes: a crash or a kill never leaves a half-written file under the final name."""
import os
from typing import Callable


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temporary file beside path, then rename it into place.

    The temporary name keeps path's extension (np.save and np.savez would add one otherwise) and the
    process id, so processes and threads writing different files never collide."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    stem, extension = os.path.splitext(path)
    tmp = f"{stem}.tmp{os.getpid()}{extension}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

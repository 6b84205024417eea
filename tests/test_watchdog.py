"""utils/watchdog.py and the write fence in utils/files.py: torchrun workers stop when their launcher dies."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from autoregressive.utils import files
from test_train_c2i import launch, write_codes


def children_of(pid: int):
    """Process ids whose parent is pid (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's new parent may be slow to reap it, or never do it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def drain(stream, lines):
    for line in stream:
        lines.append(line)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc")
def test_workers_stop_within_seconds_when_the_launcher_is_killed(tmp_path):
    """SIGKILL torchrun alone (not its workers) during a long 2-process run: both workers end within
    10 s with a line saying why, and no checkpoint (or temporary file) appears after they are gone."""
    codes = tmp_path / "codes"
    write_codes(codes)
    results = tmp_path / "results"
    checkpoints = results / "000-ARPG-tiny" / "checkpoints"
    launcher = launch(codes, results, ["--epochs", "100000", "--max-steps", "100000", "--ckpt-every", "1"])
    output = []
    threading.Thread(target=drain, args=(launcher.stdout, output), daemon=True).start()  # never block a writer
    workers = []
    try:
        deadline = time.time() + 240
        while not (checkpoints / "0000002.pt").exists():  # both workers are training
            assert launcher.poll() is None and time.time() < deadline, "".join(output)
            time.sleep(0.05)
        workers = children_of(launcher.pid)
        assert len(workers) == 2, workers
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        killed_at = time.time()
        while any(map(running, workers)) and time.time() < killed_at + 10:
            time.sleep(0.1)
        assert not any(map(running, workers)), f"workers still running 10 s after their launcher died: {workers}"
        written = sorted(path.name for path in checkpoints.iterdir())
        time.sleep(2)
        assert sorted(path.name for path in checkpoints.iterdir()) == written
        assert not [name for name in written if ".tmp" in name], written
        assert "the torchrun launcher" in "".join(output), "".join(output)
    finally:
        for pid in workers:  # only if the watchdog failed: leave no trainer behind
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_stop_writes_waits_for_a_write_under_way_and_lets_no_new_one_begin(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_writes_stopped", False)  # restored afterwards: other tests write files
    release = threading.Event()

    def slow_write(tmp):
        Path(tmp).write_text("half")
        release.wait()
        Path(tmp).write_text("whole")

    under_way = threading.Thread(target=files.write_atomic, args=(str(tmp_path / "a.pt"), slow_write))
    under_way.start()
    while not list(tmp_path.glob("a.tmp*")):
        time.sleep(0.01)
    assert not files.stop_writes(timeout=0.2)  # still writing
    release.set()
    assert files.stop_writes(timeout=10)
    under_way.join()
    assert (tmp_path / "a.pt").read_text() == "whole" and not list(tmp_path.glob("*.tmp*"))

    late = threading.Thread(target=files.write_atomic, args=(str(tmp_path / "b.pt"), slow_write), daemon=True)
    late.start()
    late.join(0.3)
    assert late.is_alive() and not list(tmp_path.glob("b*"))  # held before it writes anything
    with files._writes:  # let it go, so no thread outlives the test
        files._writes_stopped = False
        files._writes.notify_all()
    late.join(10)
    assert (tmp_path / "b.pt").read_text() == "whole"


def test_the_watchdog_runs_only_under_torchrun(monkeypatch):
    from autoregressive.utils import watchdog

    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(watchdog, "_started", False)
    assert not watchdog.install_orphan_watchdog()
    assert not [thread for thread in threading.enumerate() if thread.name == "orphan-watchdog"]

"""autoregressive.utils.dist: leaving the process group together."""
import json
import os
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from autoregressive.utils.dist import cleanup

LATE_BY = 2.0  # seconds rank 1 spends on its last step before it leaves


def leave(rank: int, out_dir: str) -> None:
    # a file store has no server process that could go away before the other rank is done with it
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    dist.barrier()
    if rank == 1:
        time.sleep(LATE_BY)
    start = time.perf_counter()
    cleanup()
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as file:
        json.dump({"seconds": time.perf_counter() - start, "left": not dist.is_initialized()}, file)


def test_cleanup_waits_for_every_rank_before_tearing_down(tmp_path):
    """Rank 0 may not close its gloo connections while rank 1 is still busy (that aborted rank 1 in CI):
    cleanup() returns on rank 0 only once rank 1 has reached it too, and both leave the group."""
    mp.spawn(leave, args=(str(tmp_path),), nprocs=2, join=True)
    first, second = (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1))
    assert first["left"] and second["left"]
    assert first["seconds"] >= LATE_BY / 2, first  # without the meeting: a few milliseconds



def look(rank: int, out_dir: str) -> None:
    from autoregressive.utils.cli import UserError
    from autoregressive.utils.dist import check_shared_folder

    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    report = {}
    for case, folder in (("shared", "results"), ("local", f"results-of-node-{rank}")):  # local: a node's own disk
        folder = os.path.join(out_dir, folder)
        os.makedirs(folder, exist_ok=True)
        try:
            check_shared_folder(folder, wait_seconds=0.5)
            report[case] = "ok"
        except UserError as error:  # one line at the command line, as every bad input
            report[case] = str(error)
        report[case + " left"] = os.listdir(folder)
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as file:
        json.dump(report, file)
    cleanup()


def test_a_folder_that_only_one_node_sees_is_refused_on_every_rank(tmp_path):
    """Several nodes must share --results-dir / --sample-dir: a folder rank 1 does not see (its own,
    as on nodes with local disks) stops every rank with the same explanation instead of a hang later."""
    mp.spawn(look, args=(str(tmp_path),), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["shared"] for report in reports] == ["ok", "ok"]
    assert reports[0]["shared left"] == []  # the probe file is gone
    for report in reports:
        assert report["local"].startswith("ranks [1] do not see"), report
        assert "filesystem every node shares" in report["local"]

"""autoregressive.utils.dist: leaving the process group together, and a folder every node must share."""
import json
import os
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from autoregressive.utils.dist import cleanup

LATE_BY = 2.0  # seconds rank 1 spends on its last step before it leaves


def look(rank: int, out_dir: str) -> dict:
    from autoregressive.utils.cli import UserError
    from autoregressive.utils.dist import check_shared_folder

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
    return report


def each_rank(rank: int, out_dir: str) -> None:
    """Both checks in one process group (starting the processes is most of a spawn's time): the folders,
    then leaving with rank 1 late."""
    # a file store has no server process that could go away before the other rank is done with it
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=2)
    report = {"folders": look(rank, out_dir)}
    dist.barrier()
    if rank == 1:
        time.sleep(LATE_BY)
    start = time.perf_counter()
    cleanup()
    report["leave"] = {"seconds": time.perf_counter() - start, "left": not dist.is_initialized()}
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as file:
        json.dump(report, file)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(each_rank, args=(str(out_dir),), nprocs=2, join=True)
    return [json.loads((out_dir / f"{rank}.json").read_text()) for rank in (0, 1)]


def test_cleanup_waits_for_every_rank_before_tearing_down(reports):
    """Rank 0 may not close its gloo connections while rank 1 is still busy (that aborted rank 1 in CI):
    cleanup() returns on rank 0 only once rank 1 has reached it too, and both leave the group."""
    first, second = (report["leave"] for report in reports)
    assert first["left"] and second["left"]
    assert first["seconds"] >= LATE_BY / 2, first  # without the meeting: a few milliseconds


def test_a_folder_that_only_one_node_sees_is_refused_on_every_rank(reports):
    """Several nodes must share --results-dir / --sample-dir: a folder rank 1 does not see (its own,
    as on nodes with local disks) stops every rank with the same explanation instead of a hang later."""
    reports = [report["folders"] for report in reports]
    assert [report["shared"] for report in reports] == ["ok", "ok"]
    assert reports[0]["shared left"] == []  # the probe file is gone
    for report in reports:
        assert report["local"].startswith("ranks [1] do not see"), report
        assert "filesystem every node shares" in report["local"]

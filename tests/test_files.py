"""autoregressive/utils/files.py: atomic writes and the clean-up of what a killed writer leaves."""
from autoregressive.utils.files import remove_stale_temporaries, write_atomic


def test_stale_temporaries_of_write_atomic_are_removed_and_nothing_else(tmp_path):
    write_atomic(str(tmp_path / "000001.png"), lambda tmp: open(tmp, "wb").write(b"done"))
    left_by_kills = ["000002.tmp123.png", "0000040.tmp99.pt", "codes.tmp7"]
    kept = ["000001.png", "000003.png", "notes.tmp.txt", "0000040.tmp"]  # .tmp folders are save_sharded's
    for name in left_by_kills + kept[1:3]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "0000040.tmp").mkdir()
    assert remove_stale_temporaries(str(tmp_path)) == len(left_by_kills)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temporaries(str(tmp_path / "missing")) == 0

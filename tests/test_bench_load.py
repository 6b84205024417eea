"""scripts/bench_load.py times the samplers' loading (built from the checkpoint) against random weights
then copied, on the same file; here on the CPU with the tiny sizes."""
import pytest
import torch

from autoregressive.utils.cli import UserError
from scripts import bench_load


def test_both_ways_load_the_same_weights_and_the_table_says_so(capsys):
    rows = bench_load.main(["--models", "ARPG-tiny,ARPG-digits", "--device", "cpu", "--reps", "2",
                            "--precision", "none"])
    assert [row["model"] for row in rows] == ["ARPG-tiny", "ARPG-digits"]
    assert all(row["same weights"] == "yes" for row in rows)
    assert all(float(row["built from the checkpoint s"]) > 0 and row["speed-up"].endswith("x") for row in rows)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | checkpoint GB | random weights, then copied s |") and len(table) == 4
    assert torch.is_grad_enabled()  # the tests after it train


def test_an_unknown_model_is_refused():
    with pytest.raises(UserError, match="--models: unknown ARPG-huge; choose from ARPG-L"):
        bench_load.main(["--models", "ARPG-huge", "--device", "cpu"])
    with pytest.raises(UserError, match="--reps must be >= 1"):
        bench_load.main(["--models", "ARPG-tiny", "--reps", "0"])

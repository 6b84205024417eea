"""The parts of the precision check (run it as `python -m scripts.check_precision`): data.py the synthetic
set, modes.py the sampling modes, measure.py the readings, judge.py the pass rules, run.py the runs,
parallel.py one process per run, report.py the files."""

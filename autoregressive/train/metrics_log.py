"""A run's evaluation history: run_dir/metrics.csv (one row per evaluation: step, then each metric) and
run_dir/metrics.png (each metric against the step), both rewritten atomically after every evaluation."""
import csv
import os
from typing import Dict, List

from autoregressive.utils.files import write_atomic

CSV_NAME, PLOT_NAME = "metrics.csv", "metrics.png"


class MetricsLog:
    def __init__(self, run_dir: str, start_step: int):
        """start_step: the step the run starts (or resumes) at. Rows of later steps were written by a run
        killed after its last checkpoint; the resumed run evaluates those steps again, so they are dropped."""
        self.csv_path, self.plot_path = os.path.join(run_dir, CSV_NAME), os.path.join(run_dir, PLOT_NAME)
        self.rows: List[Dict[str, float]] = []
        if os.path.exists(self.csv_path):
            with open(self.csv_path, newline="") as file:
                self.rows = [{key: float(value) for key, value in row.items() if value != ""}
                             for row in csv.DictReader(file)]
            self.rows = [row for row in self.rows if row["step"] <= start_step]
            self.write_csv()

    def add(self, step: int, metrics: Dict[str, float]) -> None:
        self.rows.append({"step": step, **metrics})
        self.write_csv()
        self.plot()

    def columns(self) -> List[str]:
        """step, then every metric in the order first seen (runs resumed with other flags may add some)."""
        names = {"step": None}
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    def write_csv(self) -> None:
        def write(path):
            with open(path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.columns())
                writer.writeheader()
                writer.writerows({key: int(value) if key == "step" else value for key, value in row.items()}
                                 for row in self.rows)

        write_atomic(self.csv_path, write)

    def plot(self) -> None:
        # The object-oriented matplotlib API: no pyplot state, no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        metrics = self.columns()[1:]
        figure = Figure(figsize=(4 * len(metrics), 3.2), layout="constrained")
        FigureCanvasAgg(figure)
        for index, name in enumerate(metrics):
            axes = figure.add_subplot(1, len(metrics), index + 1)
            points = [(row["step"], row[name]) for row in self.rows if name in row]
            axes.plot([step for step, _ in points], [value for _, value in points], marker="o")
            axes.set_xlabel("step")
            axes.set_title(name.replace("_", " "))
            axes.grid(alpha=0.3)
        write_atomic(self.plot_path, lambda path: figure.savefig(path, dpi=100))

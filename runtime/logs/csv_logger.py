"""`metrics.csv` that a resumed run extends instead of erasing, and that a kill never corrupts.

Lightning's CSVLogger deletes an existing `metrics.csv` when it starts, rewrites the whole file in place when a
new column appears, and keeps rows in memory for up to 100 logging steps. Here the file is adopted (its header
kept, a torn last line from a killed process dropped), rewrites go through a temporary file, rows reach the disk
at least every `flush_seconds`, and a run resumed from the checkpoint of step `start_step` first drops the rows it
will log again, so every step appears once.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any, Iterable

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

METRICS_FILE = "metrics.csv"


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a metrics file, without a torn last line or rows of the wrong width."""
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # the process died while writing this row
    table = list(csv.reader(lines))
    if not table:
        return [], []
    header, body = table[0], table[1:]
    return header, [dict(zip(header, row)) for row in body if len(row) == len(header)]


def write_rows(path: Path, header: list[str], rows: Iterable[dict[str, Any]]) -> None:
    """Replace the file in one step (write a temporary file, then rename), so a kill leaves old or new."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer, but it adopts an existing file rather than deleting it."""

    def _check_log_dir_exists(self) -> None:  # called by the base __init__; Lightning deletes the file here
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        header, rows = read_rows(path)
        if not header:
            path.unlink()  # empty: a process killed before its first row
            return
        write_rows(path, header, rows)  # drops a torn or malformed row, so appending starts on a clean line
        self.metrics_keys = list(header)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _, rows = read_rows(Path(self.metrics_file_path))
        write_rows(Path(self.metrics_file_path), fieldnames, rows)

    def keep_steps_before(self, step: int) -> int:
        """Drop rows logged at `step` or later (a resumed run logs them again). Returns the rows dropped."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return 0
        header, rows = read_rows(path)
        kept = [row for row in rows if row.get("step", "") != "" and int(float(row["step"])) < step]
        write_rows(path, header, kept)
        return len(rows) - len(kept)


class RunCSVLogger(CSVLogger):
    """CSVLogger for a run folder: appends across resumes, flushes by time (`flush_seconds`) and on demand.
    `start_step`: the step the run starts from (a resumed run's checkpoint): rows logged at that step or later, by
    the attempt that was interrupted, are dropped before the first row is written, since they are logged again."""

    def __init__(self, save_dir: str, name: str = "", version: str = "", flush_seconds: float = 2.0,
                 start_step: int = 0, **kwargs: Any):
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self.flush_seconds, self.start_step = flush_seconds, start_step
        self._last_flush = time.monotonic()

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
            if self.start_step:
                self._experiment.keep_steps_before(self.start_step)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        super().save()
        self._last_flush = time.monotonic()

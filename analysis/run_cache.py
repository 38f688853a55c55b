"""Run folders read once and kept until one of their files changes: what a viewer that refreshes a folder of
hundreds of runs every few seconds needs (reading a run parses its YAML and its metrics.csv).

A run's signature is the modification time (ns) and size of each file `load_run` reads; a folder whose signature is
unchanged is served from the cache, any other is read again. Folders no longer asked for are dropped at `prune`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from analysis.runs import RUN_FILES, Run, load_run, metrics_files

SAVED_HYDRA = ".hydra/hydra.yaml"  # read beside RUN_FILES: the config's `${hydra:...}` values and group choices


def signature(path: Path) -> tuple:
    """(file, mtime_ns, size) of every file a run is read from; a missing file counts as (file, None, None)."""
    files = [path / name for name in (*RUN_FILES, SAVED_HYDRA)] + [f for f in metrics_files(path)
                                                                  if f != path / "metrics.csv"]
    stamps = []
    for file in files:
        try:
            stat = os.stat(file)
            stamps.append((str(file), stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((str(file), None, None))
    return tuple(stamps)


class RunCache:
    """`load(path)` as analysis.runs.load_run, reading a folder again only when its files changed."""

    def __init__(self, read: Callable[[Path], Run] = load_run):
        self.read = read
        self.runs: dict[Path, tuple[tuple, Run]] = {}

    def load(self, path: str | Path) -> Run:
        path = Path(path)
        key, stamp = path.resolve(), signature(path)
        cached = self.runs.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, self.read(path))
            self.runs[key] = cached
        return cached[1]

    def prune(self, kept: set[Path]) -> None:
        """Forget every folder not in `kept` (resolved paths): runs deleted or moved since."""
        self.runs = {path: entry for path, entry in self.runs.items() if path in kept}

"""The Sweeps page: a multirun folder's analysis (the table and figures `python -m analysis` makes), written once into
`<sweep>/analysis/viewer/` and reused until a run of the sweep changes (or a refresh is asked for).

This is the one place the viewer writes: into the sweep's own `analysis/` folder, which `find_jobs` never reads
as a run.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from analysis.curves import curves_of
from analysis.plots import DEFAULT_GROK_KEY, write_plots
from analysis.sweep import NOT_RUN_FOLDERS, find_jobs
from analysis.table import sweep_table, to_markdown, write_table
from core.errors import require
from viewer.data import IMAGE_SUFFIXES, inside, jsonable, run_name

CACHE = Path("analysis") / "viewer"
INPUTS = ("summary.json", "metrics.csv", "multirun.yaml")  # a newer one of these makes the cached analysis stale
_lock = threading.Lock()  # one analysis at a time: two requests for a sweep would write the same files


def find_sweeps(root: Path) -> list[str]:
    """The multirun folders (holding multirun.yaml) at or below root, as names relative to it."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if "multirun.yaml" in files:
            found.append(run_name(Path(folder), root))
            subfolders.clear()
        else:
            subfolders[:] = sorted(s for s in subfolders if s not in NOT_RUN_FOLDERS)
    return found


def sweep_path(root: Path, name: str) -> Path:
    """The multirun folder `name` under root; `..`, absolute names and folders without multirun.yaml are refused."""
    path = inside(root, name, "sweep")
    require((path / "multirun.yaml").is_file(), "sweep", name, "a multirun folder (holding multirun.yaml)")
    return path


def grok_key(table_columns: list[str]) -> str:
    """The grok/* step the figures use, chosen as `python -m analysis` does by default."""
    keys = [c for c in table_columns if c.startswith("grok/")]
    if DEFAULT_GROK_KEY in keys:
        return DEFAULT_GROK_KEY
    return next((k for k in keys if k.startswith("grok/val_") and k.endswith("_0.99_step")), DEFAULT_GROK_KEY)


def _newest_input(sweep: Path) -> float:
    newest = 0.0
    for folder, subfolders, files in os.walk(sweep):
        subfolders[:] = [s for s in subfolders if s not in NOT_RUN_FOLDERS]
        newest = max([newest, *(os.stat(os.path.join(folder, f)).st_mtime for f in files if f in INPUTS)])
    return newest


def is_stale(sweep: Path) -> bool:
    table = sweep / CACHE / "table.csv"
    return not table.is_file() or table.stat().st_mtime < _newest_input(sweep)


def sweep_analysis(root: Path, name: str, refresh: bool = False) -> dict[str, Any]:
    """The sweep's table (rows as the Runs page has them, and as Markdown) and the names of its figures (served by
    /files/), analysed again when asked to or when a run changed since the cached analysis."""
    sweep = sweep_path(root, name)
    out = sweep / CACHE
    with _lock:
        jobs = find_jobs(sweep)
        table = sweep_table(jobs, sweep)
        if refresh or is_stale(sweep):
            for old in out.glob("*.png"):  # figures a changed sweep no longer has
                old.unlink()
            write_plots(table, curves_of(jobs, sweep), out, grok_key(list(table.columns)))
            write_table(table, out)  # last: its time stamp marks the analysis complete
    figures = sorted(f for f in out.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return {"path": name, "folder": run_name(out, root), "columns": list(table.columns),
            "swept": list(table.attrs.get("swept", [])), "rows": jsonable(table.to_dict(orient="records")),
            "markdown": to_markdown(table), "figures": [run_name(f, root) for f in figures]}

"""What the viewer's pages show, as plain JSON-ready dicts and lists, built with the analysis loaders.

Pure functions of a served root folder and run names: no server, nothing written. A run is named by its folder
relative to the root (`sweep/3`, or `.` when the root is itself a run folder); `run_path` turns a name back into a
folder and refuses any that would leave the root.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.groups import flatten, run_value
from analysis.run_cache import RunCache
from analysis.runs import STATUS_NO_SUMMARY, Run, is_run_dir
from analysis.sweep import STATUS_MISSING, Job, find_jobs
from analysis.table import sweep_table
from core.errors import require

# statuses of a run that may still change: summary.json says running, or is not written yet
LIVE_STATUSES = ("running", STATUS_NO_SUMMARY, STATUS_MISSING)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")
# every page reads runs through this: a run is read again only when one of its files changed (analysis/run_cache.py),
# so the Runs page, which refreshes itself while runs are live, stays quick over a folder of a thousand runs
RUNS = RunCache()


def jsonable(value: Any) -> Any:
    """`value` with what JSON cannot hold made plain: NaN, inf and pd.NA -> None, numpy scalars -> Python ones."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def run_name(path: Path, root: Path) -> str:
    """A folder's name in the viewer: relative to the root, `.` for the root itself."""
    relative = path.resolve().relative_to(root.resolve())
    return relative.as_posix() if relative.parts else "."


def inside(root: Path, name: str, key: str) -> Path:
    """`root / name` resolved, refused (ConfigError under `key`) when the name is empty, absolute or has `..`, or
    when it resolves (symlinks followed) outside root."""
    require(bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts, key, name,
            "a path relative to the served folder, without ..")
    path = (root / name).resolve()
    require(path.is_relative_to(root.resolve()), key, name, "a path inside the served folder")
    return path


def run_path(root: Path, name: str) -> Path:
    """The run folder named `name` under `root`; a name with `..`, an absolute one, or one that is not a run folder
    is refused (ConfigError)."""
    path = inside(root, name, "run")
    require(path.is_dir() and is_run_dir(path), "run", name, "a run folder (summary.json, metrics.csv or .hydra/)")
    return path


def sweep_of(path: Path, root: Path) -> str | None:
    """The multirun folder holding `path` (relative to root), if any, looking no higher than root."""
    root = root.resolve()
    for folder in path.resolve().parents:
        if folder != root and not folder.is_relative_to(root):
            break
        if (folder / "multirun.yaml").is_file():
            return run_name(folder, root)
    return None


def _experiment(job: Job) -> Any:
    if job.run is None:
        return None
    return job.run.summary.get("experiment") or job.run.config.get("name")


def runs_table(root: Path) -> dict[str, Any]:
    """The Runs page: one row per run or planned job under root (the sweep table's rows, `analysis/table.py`), with
    `path` (the run's name here), `experiment` and `sweep` added; `columns` in display order, `swept` the keys
    that differ between runs, `live` whether some run may still change (the page then refreshes itself)."""
    jobs = find_jobs(root, RUNS.load)
    RUNS.prune({job.path.resolve() for job in jobs if job.run is not None})
    table = sweep_table(jobs, root)
    rows = []
    for job, record in zip(jobs, table.to_dict(orient="records")):
        row = {"path": run_name(job.path, root) if job.path.resolve().is_relative_to(root.resolve()) else str(job.path),
               "experiment": _experiment(job), "sweep": sweep_of(job.path, root)}
        rows.append(jsonable(record | row))  # the experiment the run names itself, over a swept override's value
    columns = ["run", "experiment", "sweep", *[c for c in table.columns if c not in ("run", "experiment")]]
    return {"root": str(root), "columns": columns, "swept": list(table.attrs.get("swept", [])), "rows": rows,
            "live": any(row["status"] in LIVE_STATUSES for row in rows)}


def metric_series(metrics: pd.DataFrame) -> dict[str, list[list[float]]]:
    """{metric: [[step, value], ...]} of a run's metrics (`read_metrics`), steps without a finite value left out."""
    series = {}
    for name in metrics.columns:
        if name == "step":
            continue
        points = metrics[["step", name]].replace([np.inf, -np.inf], np.nan).dropna()
        series[name] = [[int(s), float(v)] for s, v in zip(points["step"], points[name])]
    return series


def runs_metrics(root: Path, names: Sequence[str], group_key: str | None = None) -> dict[str, Any]:
    """The Curves page: per run its metric series; `metrics` the union of their names. With `group_key`, runs are
    grouped by that key's value (a config key or group, as `python -m analysis --group-by` reads it:
    analysis.groups.run_value) and each group gets, per metric, the mean, min and max over its runs (`group_stats`)."""
    runs = {name: RUNS.load(run_path(root, name)) for name in names}  # each run read once: metrics and config
    curves = {name: metric_series(run.metrics) for name, run in runs.items()}
    result: dict[str, Any] = {"runs": curves, "metrics": sorted({m for series in curves.values() for m in series})}
    if group_key:
        members: dict[str, list[str]] = {}
        for name, run in runs.items():
            members.setdefault(repr_value(run_value(run, group_key)), []).append(name)
        result["groups"] = [
            {"label": f"{group_key}={label}", "runs": runs,
             "metrics": {metric: group_stats([curves[r][metric] for r in runs if metric in curves[r]])
                         for metric in result["metrics"]}}
            for label, runs in members.items()]
    return result


def repr_value(value: Any) -> str:
    return "(unset)" if value is None else str(value)


def group_stats(series: Sequence[Sequence[Sequence[float]]]) -> dict[str, list[float]]:
    """Mean, min and max of several [[step, value], ...] series at the steps every one of them has."""
    if not series:
        return {"steps": [], "mean": [], "min": [], "max": [], "n": 0}
    by_step = [dict((int(s), float(v)) for s, v in points) for points in series]
    shared = sorted(set.intersection(*(set(points) for points in by_step)))
    values = np.array([[points[s] for s in shared] for points in by_step], dtype=float).reshape(len(by_step), len(shared))
    return {"steps": shared, "mean": values.mean(axis=0).tolist(), "min": values.min(axis=0).tolist(),
            "max": values.max(axis=0).tolist(), "n": len(series)}


def plot_files(path: Path, root: Path) -> list[str]:
    """The images in a run's `plots/` folder, as names relative to root (what `/files/<name>` serves)."""
    folder = path / "plots"
    if not folder.is_dir():
        return []
    return [run_name(f, root) for f in sorted(folder.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]


# the curves the Run page draws (train and val together, over log steps, as grokking is read)
RUN_CURVES = ("train/acc", "val/acc", "train/loss", "val/loss", "train/exact_match", "val/exact_match")


def summary_card(run: Run) -> dict[str, Any]:
    """What the Run page shows first of summary.json: status, experiment, seed, steps (and the step it stopped for
    its best weights), wall time, the final metrics, the grokking steps (null: not reached) and whether it grokked."""
    summary = run.summary
    return {"status": run.status, "experiment": summary.get("experiment") or run.config.get("name"),
            "seed": summary.get("seed", run.config.get("seed")), "steps": summary.get("steps"),
            "wall_time_s": summary.get("wall_time_s"), "steps_per_s": summary.get("steps_per_s"),
            "final": {k: v for k, v in summary.get("final", {}).items() if k != "non_finite"},
            "grok": summary.get("grok", {}), "grokked": summary.get("grokked"), "error": summary.get("error")}


def run_detail(root: Path, name: str) -> dict[str, Any]:
    """The Run page: the summary card (`summary_card`), the run's train / val curves (RUN_CURVES, as
    `metric_series`), summary.json itself, overrides, the composed config (YAML text and flattened), the plot images
    and the problems the loaders found in its files."""
    path = run_path(root, name)
    run = RUNS.load(path)
    config_file = path / ".hydra" / "config.yaml"
    overrides_file = path / ".hydra" / "overrides.yaml"
    series = metric_series(run.metrics[[c for c in ("step", *RUN_CURVES) if c in run.metrics]])
    return jsonable({
        "path": name, "status": run.status, "card": summary_card(run), "curves": series, "summary": run.summary,
        "overrides": run.overrides, "overrides_text": _text(overrides_file), "config_text": _text(config_file),
        "config": flatten(run.config), "plots": plot_files(path, root), "problems": run.problems,
    })


def _text(file: Path) -> str | None:
    try:
        return file.read_text(errors="replace") if file.is_file() else None
    except OSError:
        return None


def config_diff(root: Path, a: str, b: str) -> list[dict[str, Any]]:
    """The flattened config keys whose values differ between runs a and b (a key only one of them has counts).
    Paths inside each run's own folder (checkpoint dirs, the output dir) are compared with that folder written as
    `<run>`, so two runs differ only where their settings do."""
    config_a, config_b = (_own_config(root, name) for name in (a, b))
    missing = object()
    rows = []
    for key in sorted(set(config_a) | set(config_b)):
        value_a, value_b = config_a.get(key, missing), config_b.get(key, missing)
        if value_a is missing or value_b is missing or value_a != value_b:
            rows.append({"key": key, "a": None if value_a is missing else value_a,
                         "b": None if value_b is missing else value_b})
    return jsonable(rows)


def _own_config(root: Path, name: str) -> dict[str, Any]:
    """A run's flattened config, its own folder (where it is now, and where it was written) replaced by `<run>`."""
    path = run_path(root, name)
    run = RUNS.load(path)
    config = flatten(run.config)
    folders = {str(path), run.summary.get("run_dir"), config.get("paths.output_dir")}
    folders = sorted((f for f in folders if isinstance(f, str) and f), key=len, reverse=True)

    def own(value: Any) -> Any:
        if isinstance(value, str):
            for folder in folders:
                value = value.replace(folder, "<run>")
        return value

    return {key: own(value) for key, value in config.items()}


def file_path(root: Path, name: str) -> Path:
    """An image file under root to serve; anything else (outside root, `..`, not an image, absent) is refused."""
    path = inside(root, name, "file")
    require(path.suffix.lower() in IMAGE_SUFFIXES, "file", name, f"an image ({', '.join(IMAGE_SUFFIXES)})")
    require(path.is_file(), "file", name, "an existing file")
    return path


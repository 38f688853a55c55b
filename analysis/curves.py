"""Training curves of many runs in one long table, and their spread across seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.sweep import Job, find_jobs, relative_name
from analysis.table import SEED

CURVE_COLUMNS = ["run", "step", "metric", "value"]


def load_curves(path: str | Path) -> pd.DataFrame:
    """Every logged metric of every run under `path`: columns run, step (optimiser steps), metric, value."""
    return curves_of(find_jobs(path), Path(path))


def curves_of(jobs: Sequence[Job], root: Path) -> pd.DataFrame:
    frames = []
    for job in jobs:
        if job.run is None or job.run.metrics.empty:
            continue
        long = job.run.metrics.melt(id_vars="step", var_name="metric", value_name="value").dropna(subset=["value"])
        frames.append(long.assign(run=relative_name(job.path, root))[CURVE_COLUMNS])
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=t) for name, t in
                             zip(CURVE_COLUMNS, ("object", "int64", "object", "float64"))})
    return pd.concat(frames, ignore_index=True)


def condition_labels(table: pd.DataFrame, swept: Sequence[str] | None = None) -> pd.Series:
    """Per run: `key=value, ...` over the swept keys other than seed (one label for all when nothing else varies)."""
    keys = [k for k in (table.attrs.get("swept", []) if swept is None else swept) if k != SEED]
    if not keys:
        return pd.Series("all runs", index=table.index)
    return table[keys].apply(lambda row: ", ".join(f"{k}={row[k]}" for k in keys), axis=1)


def seed_bands(curves: pd.DataFrame, table: pd.DataFrame, metric: str = "val/acc",
               swept: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, min, max and count of `metric` at each step over the runs of each condition (seeds pooled).

    At a step some runs did not reach (one stopped early after grokking), the statistics are over the runs that
    logged it; `n` says how many.
    """
    labels = pd.DataFrame({"run": table["run"], "condition": condition_labels(table, swept)})
    picked = curves[curves["metric"] == metric].merge(labels, on="run")
    bands = picked.groupby(["condition", "step"])["value"].agg(mean="mean", min="min", max="max", n="count")
    return bands.reset_index()


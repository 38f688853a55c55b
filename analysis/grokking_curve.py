"""A run's grokking curve, as the seeds draw it: train and val accuracy and loss over log steps, the grokking steps
marked (and, for tasks that have them, the theoretical loss bounds).

Why here and drawn from the run's files: the life cycle draws it into `plots/grokking_curve.png` when a run ends
(runtime/lifecycle/summary.py), from metrics.csv and summary.json, so it costs nothing while training, draws a
resumed run's whole history, and reaches ensemble members as it reaches solo runs. A run that logged none of the
curves (a task without accuracy and loss) gets no figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.runs import read_metrics

PANELS = ("acc", "loss")
SPLITS = ("train", "val")
FILE = "grokking_curve.png"


def curve_points(metrics: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`<split>/<acc|loss>` -> (steps done, values) at every logged step with a finite value; steps start at 1, as
    a log axis needs (analysis.runs.read_metrics counts steps done)."""
    points = {}
    for panel in PANELS:
        for split in SPLITS:
            name = f"{split}/{panel}"
            if name not in metrics:
                continue
            logged = metrics[["step", name]].dropna()
            logged = logged[np.isfinite(logged[name]) & (logged["step"] >= 1)]
            if len(logged):
                points[name] = (logged["step"].to_numpy(dtype=float), logged[name].to_numpy(dtype=float))
    return points


def grokking_curve_figure(metrics: pd.DataFrame, grok: Mapping[str, Any] | None = None,
                          bounds: Mapping[str, float] | None = None, title: str = "") -> Figure | None:
    """Accuracy and loss panels over log steps, train and val in each; a dotted line at each reached `grok/*` step;
    dashed grey lines at positive loss bounds. None when the run logged no curve."""
    points = curve_points(metrics)
    if not points:
        return None
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = dict(zip(PANELS, fig.subplots(1, 2)))
    for name, (steps, values) in points.items():
        split, panel = name.split("/")
        axes[panel].plot(steps, values, color="C0" if split == "train" else "C1", label=split)
    reached = sorted((step, key) for key, step in (grok or {}).items() if isinstance(step, (int, float)) and step >= 1)
    for index, (step, key) in enumerate(reached):
        for panel, ax in axes.items():
            ax.axvline(step, color=f"C{2 + index}", ls=":", lw=1,
                       label=f"{key.removeprefix('grok/')} = {step:,.0f}" if panel == "acc" else None)
    for name, value in (bounds or {}).items():
        if value > 0:  # a zero bound has no place on a log axis
            axes["loss"].axhline(value, color="grey", ls="--", lw=1)
            axes["loss"].annotate(name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                                  va="bottom")
    axes["acc"].set(xlabel="step (log)", ylabel="accuracy", xscale="log", ylim=(0, 1.02))
    loss_values = np.concatenate([v for n, (_, v) in points.items() if n.endswith("/loss")] or [np.ones(1)])
    axes["loss"].set(xlabel="step (log)", ylabel="loss", xscale="log",
                     yscale="log" if (loss_values > 0).all() else "linear")
    for ax in axes.values():
        # a log axis labelled at 1, 2, 5 x 10^k in plain numbers (matplotlib's minor labels overlap)
        for axis, text in ((ax.xaxis, "{:,.0f}"), (ax.yaxis, "{:g}")):
            if axis.get_scale() == "log":
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda value, _, text=text: text.format(value)))
                axis.set_minor_formatter(NullFormatter())
        if ax.has_data():
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def draw_grokking_curve(run_dir: str | Path, summary: Mapping[str, Any]) -> Path | None:
    """`plots/grokking_curve.png` of a run folder from its metrics.csv and its summary (grok steps, loss bounds);
    None when it logged no curve."""
    run_dir = Path(run_dir)
    fig = grokking_curve_figure(read_metrics(run_dir), summary.get("grok"), summary.get("loss_bounds"),
                                title=f"{summary.get('experiment') or run_dir.name}, seed {summary.get('seed')}: "
                                      f"{summary.get('status')} after {summary.get('steps', 0):,} steps")
    if fig is None:
        return None
    path = run_dir / "plots" / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

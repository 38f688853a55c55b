"""Sweep figures (matplotlib's object API, no pyplot state): grokking step against each swept value, the
accuracy / effective-depth phase diagram with its Pareto frontier, curves with their spread across seeds, and for
a swept choice (an experiment, an FFN type) its final numbers side by side, one dot per seed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.curves import condition_labels, seed_bands
from analysis.table import DEPTH, SEED

DEFAULT_GROK_KEY = "grok/val_acc_0.99_step"
SPANS_DECADES = 10.0  # log axis when the largest positive value is more than this times the smallest


def new_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def wants_log(values: Sequence[float]) -> bool:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return len(values) > 1 and bool((values > 0).all()) and values.max() / values.min() > SPANS_DECADES


def numeric_swept_keys(table: pd.DataFrame) -> list[str]:
    """Swept keys worth an x axis: numbers (not flags), more than one value, not the seed."""
    keys = []
    for key in table.attrs.get("swept", []):
        column = table[key]
        if key != SEED and pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column) \
                and column.nunique() > 1:
            keys.append(key)
    return keys


def categorical_swept_keys(table: pd.DataFrame) -> list[str]:
    """Swept keys that name choices (text, more than one value): compared side by side, not on an axis."""
    return [key for key in table.attrs.get("swept", [])
            if key != SEED and not pd.api.types.is_numeric_dtype(table[key]) and table[key].nunique() > 1]


# what a comparison of choices shows, in this order, when the runs have it (a name ending in `*` is a prefix)
COMPARED = ("val/exact_match", "val/acc", "circuits/ablation/ffn_*", "circuits/ablation/attention_*",
            "circuits/dla/attention_share", "circuits/dla/ffn_share", "circuits/moe/mi_expert_operation/*")
MAX_PANELS = 6


def compared_metrics(table: pd.DataFrame) -> list[str]:
    chosen = []
    for wanted in COMPARED:
        names = [c for c in table.columns if c == wanted or (wanted.endswith("*") and c.startswith(wanted[:-1]))]
        chosen += [c for c in names if pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().any()]
    if "val/exact_match" in chosen and "val/acc" in chosen:
        chosen.remove("val/acc")
    return chosen[:MAX_PANELS]


def choice_figure(table: pd.DataFrame, key: str) -> Figure | None:
    """One panel per compared metric: each choice of `key` on the x axis, a dot per run (seed), a bar at the mean."""
    metrics = compared_metrics(table)
    if not metrics:
        return None
    choices = sorted(table[key].dropna().astype(str).unique())
    shared = os.path.commonprefix(choices) if len(choices) > 1 else ""  # moe_expressivity_glu, ... -> glu, ...
    labels = [choice[len(shared):] or choice for choice in choices]
    figure = new_figure(3.0 * len(metrics) + 0.6, 3.4)
    for axes, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
        for x, choice in enumerate(choices):
            values = table.loc[table[key].astype(str) == choice, metric].dropna().astype(float).to_numpy()
            if len(values):
                axes.bar(x, values.mean(), width=0.6, color=f"C{x % 10}", alpha=0.35)
                axes.scatter(np.full(len(values), x) + np.linspace(-0.15, 0.15, len(values)), values,
                             color=f"C{x % 10}", s=18, zorder=3)
        axes.set_xticks(range(len(choices)), labels, rotation=30, fontsize=7)
        axes.set_title(metric.removeprefix("circuits/"), fontsize=8)
    figure.suptitle(f"final numbers by {key} (dots: runs, bars: mean)", fontsize=9)
    return figure


def grok_step_figure(table: pd.DataFrame, key: str, grok_key: str = DEFAULT_GROK_KEY) -> Figure:
    """Grokking step against one swept value; runs that trained without reaching it sit on the budget line
    at the top as open markers. Runs without a result (failed, missing) are counted in the title."""
    trained = table[table["steps"].notna() & table[key].notna()]
    others = [k for k in table.attrs.get("swept", []) if k != key]
    labels = condition_labels(trained, others)
    grokked = trained[grok_key].notna()
    budget = float(trained["steps"].max()) if len(trained) else 1.0
    figure = new_figure()
    axes = figure.add_subplot()
    log_y = wants_log([*trained.loc[grokked, grok_key].astype(float), budget])
    top = budget * (1.3 if log_y else 1.05)
    for index, condition in enumerate(dict.fromkeys(labels)):
        mine = labels == condition
        colour = f"C{index % 10}"
        done, not_done = trained[mine & grokked], trained[mine & ~grokked]
        if len(done):
            axes.scatter(done[key].astype(float), done[grok_key].astype(float), color=colour, s=36,
                         label=condition if len(others) else "grokked")
        if len(not_done):
            axes.scatter(not_done[key].astype(float), np.full(len(not_done), top), marker="^", s=46,
                         facecolors="none", edgecolors=colour,
                         label=f"{condition}: not grokked" if len(others) else "not grokked")
    axes.axhline(budget, color="0.5", linestyle="--", linewidth=1, label=f"budget ({budget:.0f} steps)")
    if wants_log(trained[key].astype(float)):
        axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    axes.set_ylim(top=top * (1.15 if log_y else 1.03))
    axes.set_xlabel(key)
    axes.set_ylabel(grok_key)
    dropped = len(table) - len(trained)
    axes.set_title(f"{grok_key} vs {key}" + (f" ({dropped} runs without a result not shown)" if dropped else ""),
                   fontsize=9)
    axes.legend(fontsize=7, loc="best")
    return figure


def pareto_front(depth: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Mask of the points no other point beats: none has depth <= and accuracy >= with one of them strict."""
    depth, accuracy = np.asarray(depth, dtype=float), np.asarray(accuracy, dtype=float)
    no_worse = (depth[None, :] <= depth[:, None]) & (accuracy[None, :] >= accuracy[:, None])
    better = (depth[None, :] < depth[:, None]) | (accuracy[None, :] > accuracy[:, None])
    return ~(no_worse & better).any(axis=1)


def phase_diagram(table: pd.DataFrame) -> Figure | None:
    """Final val accuracy against final effective depth, one point per run, with the Pareto frontier
    (highest accuracy for the least depth). None when no run logged an effective depth."""
    if DEPTH not in table or "val/acc" not in table:
        return None
    points = table[table[DEPTH].notna() & table["val/acc"].notna()]
    if points.empty:
        return None
    depth, accuracy = points[DEPTH].astype(float).to_numpy(), points["val/acc"].astype(float).to_numpy()
    labels = condition_labels(points)
    figure = new_figure()
    axes = figure.add_subplot()
    for index, condition in enumerate(dict.fromkeys(labels)):
        mine = (labels == condition).to_numpy()
        axes.scatter(depth[mine], accuracy[mine], color=f"C{index % 10}", s=36, label=condition)
    front = pareto_front(depth, accuracy)
    order = np.argsort(depth[front])
    axes.plot(depth[front][order], accuracy[front][order], color="black", drawstyle="steps-post", linewidth=1.2,
              label="Pareto frontier")
    axes.scatter(depth[front], accuracy[front], facecolors="none", edgecolors="black", s=90)
    axes.set_xlabel(f"final {DEPTH}")
    axes.set_ylabel("final val/acc")
    axes.set_title("accuracy vs effective depth", fontsize=9)
    axes.legend(fontsize=7, loc="best")
    return figure


def curves_figure(curves: pd.DataFrame, table: pd.DataFrame, metric: str = "val/acc") -> Figure | None:
    """`metric` against step: per condition (swept values other than seed) the mean over seeds and the
    min-max band. None when no run logged the metric."""
    bands = seed_bands(curves, table, metric)
    if bands.empty:
        return None
    figure = new_figure()
    axes = figure.add_subplot()
    for index, (condition, band) in enumerate(bands.groupby("condition", sort=False)):
        colour = f"C{index % 10}"
        runs = int(band["n"].max())
        axes.fill_between(band["step"], band["min"], band["max"], color=colour, alpha=0.2, linewidth=0)
        axes.plot(band["step"], band["mean"], color=colour, linewidth=1.5, label=f"{condition} (n={runs})")
    if wants_log(bands["step"]):
        axes.set_xscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mean and min-max over seeds", fontsize=9)
    axes.legend(fontsize=7, loc="best")
    return figure


def file_name(name: str) -> str:
    return name.replace("/", "_") + ".png"


def write_plots(table: pd.DataFrame, curves: pd.DataFrame, out_dir: Path, grok_key: str = DEFAULT_GROK_KEY,
                metric: str = "val/acc") -> list[Path]:
    """Draw every figure the sweep has data for into `out_dir`; returns the PNGs written."""
    written = []
    if grok_key in table:
        for key in numeric_swept_keys(table):
            written.append(save(grok_step_figure(table, key, grok_key), out_dir / file_name(f"grok_step_vs_{key}")))
    phase = phase_diagram(table)
    if phase is not None:
        written.append(save(phase, out_dir / "phase_diagram.png"))
    for key in categorical_swept_keys(table):
        choice = choice_figure(table, key)
        if choice is not None:
            written.append(save(choice, out_dir / file_name(f"compare_by_{key}")))
    curve = curves_figure(curves, table, metric)
    if curve is not None:
        written.append(save(curve, out_dir / file_name(f"curves_{metric}")))
    return written

"""Sweep-table columns that no run stores as such: computed from a run's metrics.csv, or from the other rows.

- `best/<metric>`: the best value of a validation accuracy over training (`val/acc`, `val/exact_match`; the maximum
  of what metrics.csv logged), beside the final one summary.json holds. A run that generalised partly and fell back
  shows both (the routed-transformer study's multi-op table: best test accuracy 25.4 %, final 17.6 %).
- `fourier/<what>`: the last logged value of each Fourier measure (callbacks/diagnostics/fourier.py), so Fourier
  structure compares across a sweep (the least-action study, phase 6: does λ change the algorithm learned?).
- `ratio/<grok key>`: steps to 95 % validation accuracy (`grok/val_<metric>_0.95_step`) divided by a baseline's
  (the routed-transformer study's "Relative speed": the routed transformer takes ~3.9x the standard one's steps,
  ~0.26x its speed). The baseline is `--baseline KEY=VALUE` (the median over the rows where KEY is VALUE, seeds
  pooled); without it, when the sweep runs several experiments, the first job's experiment (the presets list the
  baseline first: `sweep=routed_vs_standard`, `sweep=multi_op`). Empty where a run, or every baseline run, never got
  there.
"""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

from core.errors import require

BEST_OF = ("val/acc", "val/exact_match")  # accuracies: higher is better
FOURIER = "fourier/"
RATIO_OF = re.compile(r"^grok/val_[a-z_]+_0\.95_step$")  # the seed's "steps to 95 %"
RATIO = "ratio/"
EXPERIMENT = "experiment"


def best_over_training(metrics: pd.DataFrame) -> dict[str, float]:
    """`best/<metric>` for each accuracy in BEST_OF that metrics.csv logged."""
    return {f"best/{name}": float(metrics[name].max()) for name in BEST_OF
            if name in metrics and metrics[name].notna().any()}


def last_fourier(metrics: pd.DataFrame) -> dict[str, float]:
    """The last logged value of every `fourier/*` column of metrics.csv."""
    found = {}
    for name in metrics.columns:
        values = metrics[name].dropna() if str(name).startswith(FOURIER) else ()
        if len(values):
            found[name] = float(values.iloc[-1])
    return found


def default_baseline(table: pd.DataFrame) -> str | None:
    """`experiment=<the first job's>` when the sweep runs several experiments, else None (no ratio)."""
    if EXPERIMENT not in table.attrs.get("swept", []) or table[EXPERIMENT].isna().all():
        return None
    return f"{EXPERIMENT}={table[EXPERIMENT].dropna().iloc[0]}"


def baseline_rows(table: pd.DataFrame, baseline: str) -> pd.Series:
    """The rows `KEY=VALUE` selects (values compared as text, as they are written on a command line)."""
    key, _, value = baseline.partition("=")
    columns = [c for c in table.columns if not c.startswith(("grok/", RATIO, "best/", FOURIER))]
    require(bool(value) and key in table, "--baseline", baseline,
            f"KEY=VALUE with KEY one of the table's columns ({', '.join(columns)})")
    rows = table[key].map(lambda cell: cell is not None and cell is not pd.NA and _text(cell) == value)
    values = ", ".join(dict.fromkeys(_text(v) for v in table[key].dropna()))
    require(bool(rows.any()), "--baseline", baseline, f"a value {key} has in the table: {values}")
    return rows


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_baseline_ratios(table: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """The table with `ratio/<grok key>` after each steps-to-95 % column: run / median of the baseline rows.
    `baseline` None: `default_baseline`; no ratio when that is None too. Recorded in `table.attrs["baseline"]`."""
    baseline = baseline if baseline is not None else default_baseline(table)
    table.attrs["baseline"] = baseline
    if baseline is None:
        return table
    rows = baseline_rows(table, baseline)
    for name in [c for c in table.columns if RATIO_OF.match(c)]:
        steps = pd.to_numeric(table[name], errors="coerce").astype("float64")
        reference = steps[rows].dropna()
        ratio = steps / reference.median() if len(reference) else pd.Series(float("nan"), index=table.index)
        table.insert(table.columns.get_loc(name) + 1, RATIO + name, ratio.astype("float64"))
    return table

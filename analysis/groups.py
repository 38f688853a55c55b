"""A sweep grouped by a key: per group and metric, how many runs, the mean, the spread (std, min, max) and how many
runs have a value (`python -m analysis <sweep> --group-by KEY`).

Why: a study compares conditions over seeds (the MoE-expressivity study's FFN types, dense against MoE), and its table
is one line per condition, not one per run. The key is any of
- a column of the sweep table (`experiment`, a swept value, `status`);
- a config group, by the option each run took (`model/ffn`: mlp, glu, moe, ...; Hydra's runtime choices);
- a dotted config key (`model.d_model`): the run's override, else its composed config;
- a short name for one of those (SHORT_NAMES: `ffn_type` is `model/ffn`).
A metric is a column of the sweep table or any metric the runs logged (its last value). `n` counts the runs with a
value: for a `grok/*` step, the runs that reached the threshold (the mean and spread are over those).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from analysis.runs import Run
from analysis.sweep import Job
from analysis.table import DEPTH, FINAL_METRICS, LOSS_COLUMNS
from core.errors import require

SHORT_NAMES = {"ffn_type": "model/ffn"}  # what the FFN of the net's blocks is: the option of its config group
UNSET = "(unset)"  # the group of runs that have no value for the key (a job that never started, a key not set)
# what a grouped table summarises by default, when the runs have it: the final numbers, the losses against their
# bounds, the effective depth, and the analysis of the final weights that compares runs
DEFAULT_CIRCUITS = ("circuits/ablation/ffn_", "circuits/ablation/attention_", "circuits/dla/attention_share",
                    "circuits/dla/ffn_share", "circuits/moe/mi_expert_operation/")
STATISTICS = ("runs", "n", "mean", "std", "min", "max")


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted.key: value}; lists are kept whole as values."""
    if not isinstance(config, Mapping):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, name)
        else:
            flat[name] = value
    return flat


def config_value(run: Run, key: str) -> Any:
    """The value of a config key in a run: its override if it has one, else the composed config's (dotted key)."""
    if key in run.overrides:
        return run.overrides[key]
    return flatten(run.config).get(key)


def run_value(run: Run, key: str) -> Any:
    """A run's value of a group key that is not a table column: a config group's option or a config key."""
    key = SHORT_NAMES.get(key, key)
    if "/" in key:  # a config group (model/ffn), whose option the run's saved Hydra choices name
        return run.choices.get(key)
    return config_value(run, key)


def group_labels(table: pd.DataFrame, jobs: Sequence[Job], key: str) -> pd.Series:
    """Per row of the table (one per job, in order), the value of `key` as text (UNSET where a run has none)."""
    if key in table.columns:
        values = list(table[key])
    else:
        values = [run_value(job.run, key) if job.run is not None else None for job in jobs]
        require(any(v is not None for v in values), "--group-by", key,
                "a column of the table, a config group (model/ffn, or ffn_type) or a config key the runs have")
    return pd.Series([UNSET if v is None or v is pd.NA or v != v else str(v) for v in values], index=table.index,
                     name=key)


def default_metrics(table: pd.DataFrame, grok_key: str) -> list[str]:
    """What a grouped table summarises unless told: the final numbers, the losses against their bounds (sequence
    tasks), the grokking step the figures use, the effective depth, and the compared `circuits/*` numbers."""
    wanted = [*FINAL_METRICS, *LOSS_COLUMNS, grok_key, DEPTH]
    chosen = [name for name in wanted if name in table.columns]
    chosen += [name for name in table.columns if name.startswith(DEFAULT_CIRCUITS)]
    return list(dict.fromkeys(chosen))


def metric_values(table: pd.DataFrame, jobs: Sequence[Job], metric: str) -> pd.Series:
    """Per row, the metric as a number: the table's column, else the run's last logged value."""
    if metric in table.columns:
        values = pd.to_numeric(table[metric].astype("object"), errors="coerce")
    else:
        values = pd.Series([job.run.last(metric) if job.run is not None else None for job in jobs],
                           index=table.index, dtype="float64")
        require(values.notna().any(), "--stat", metric, "a column of the table or a metric the runs logged")
    return values.astype("float64")


def grouped_table(table: pd.DataFrame, jobs: Sequence[Job], key: str, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (metric, group), metrics in the order given and groups in the order they first appear: `runs` in
    the group, `n` of them with a value, and over those the mean, the sample standard deviation (n - 1; empty for one
    run), min and max."""
    labels = group_labels(table, jobs, key)
    rows = []
    for metric in metrics:
        values = metric_values(table, jobs, metric)
        for label in dict.fromkeys(labels):
            mine = values[labels == label]
            known = mine.dropna()
            rows.append({key: label, "metric": metric, "runs": len(mine), "n": len(known),
                         "mean": known.mean() if len(known) else None,
                         "std": known.std(ddof=1) if len(known) > 1 else None,
                         "min": known.min() if len(known) else None, "max": known.max() if len(known) else None})
    grouped = pd.DataFrame(rows, columns=[key, "metric", *STATISTICS])
    return grouped.astype({"runs": "Int64", "n": "Int64", "mean": "float64", "std": "float64", "min": "float64",
                           "max": "float64"})

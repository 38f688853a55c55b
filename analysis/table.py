"""The sweep table: one row per run folder or planned job, never dropping one, as CSV and Markdown.

Columns: run (folder relative to the analysed path), job, the swept values (override keys whose value differs
between jobs; seed has its own column), seed, status, steps, final train/val(/test) accuracy (and exact match for
multi-token answers), each validation accuracy with its best over training beside it (`best/val/acc`), the grok/*
steps with steps to 95 % as a ratio to a baseline's (`ratio/grok/...`; these derived columns: analysis/derived.py),
grokked, the run's dynamics (analysis/dynamics.py: grokking, instant generalisation, memorisation, ...), for sequence
tasks its loss phase against the task's loss bounds (memorising / generalising / at_bound), the last
logged gates/effective_depth (gated nets) and `fourier/*` measures, the `circuits/*` numbers of the final weights
that compare runs
(ablation accuracies, logit attribution shares, expert-operation mutual information: callbacks/diagnostics/digit_circuits.py),
wall_time_s, the init fingerprint (paired runs share
it), and error when a run recorded one.
The swept keys are kept in `table.attrs["swept"]`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis.derived import BEST_OF, best_over_training, last_fourier, with_baseline_ratios
from analysis.dynamics import classify_dynamics
from analysis.sweep import Job, find_jobs, relative_name
from datamodules.loss_bounds import classify_phase, loss_bounds

FINAL_METRICS = ("train/acc", "val/acc", "test/acc", "train/exact_match", "val/exact_match", "test/exact_match")
DEPTH = "gates/effective_depth"
# the circuits numbers a table row carries (the rest, per head and per expert, stay in summary.json and the plots)
CIRCUIT_COLUMNS = ("circuits/ablation/", "circuits/dla/attention_share", "circuits/dla/ffn_share",
                   "circuits/dla/embedding_share", "circuits/moe/mi_expert_operation/")
SEED = "seed"


def load_sweep(path: str | Path) -> pd.DataFrame:
    """The table of every run under `path` (a run, a multirun, or a folder of them)."""
    return sweep_table(find_jobs(path), Path(path))


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job (a key set in only some jobs counts), seed aside."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    missing = object()

    def varies(key: str) -> bool:
        return len({repr(job.overrides.get(key, missing)) for job in jobs}) > 1

    return [k for k in keys if k != SEED and varies(k)]


def _number(value: Any) -> Any:
    """summary.json writes non-finite floats as text ("nan", "inf"): read them back as floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _row(job: Job, root: Path, swept: Sequence[str]) -> dict[str, Any]:
    run = job.run
    summary = run.summary if run else {}
    config_seed = run.config.get(SEED) if run else None
    row: dict[str, Any] = {"run": relative_name(job.path, root), "job": job.number}
    row |= {key: job.overrides.get(key) for key in swept}
    row |= {SEED: summary.get(SEED, config_seed if config_seed is not None else job.overrides.get(SEED)),
            "status": job.status, "steps": summary.get("steps")}
    row |= {name: _number(value) for name, value in summary.get("final", {}).items() if name in FINAL_METRICS}
    row |= best_over_training(run.metrics) if run else {}
    row |= summary.get("grok", {})
    row["grokked"] = summary.get("grokked")
    row[DEPTH] = run.last(DEPTH) if run else None
    row |= last_fourier(run.metrics) if run else {}
    row["dynamics"] = dynamics(run) if run and job.status not in ("failed", "missing") else None
    row["loss_phase"] = summary.get("loss_phase") or (
        loss_phase(run.config.get("data", {}), summary.get("final", {})) if run else None)
    row |= {name: _number(value) for name, value in summary.get("circuits", {}).items()
            if name.startswith(CIRCUIT_COLUMNS)}
    row["init_fingerprint"] = summary.get("init_fingerprint")
    row["wall_time_s"] = summary.get("wall_time_s")
    row["error"] = summary.get("error")
    return row


def curve(run, metric: str) -> list[tuple[int, float]]:
    if metric not in run.metrics:
        return []
    points = run.metrics[["step", metric]].dropna()
    return list(zip(points["step"].astype(int), points[metric].astype(float)))


def dynamics(run) -> str | None:
    """The run's training dynamics (analysis/dynamics.py) from its train and val accuracy curves."""
    val = curve(run, "val/acc")
    return classify_dynamics(curve(run, "train/acc"), val) if val else None


def loss_phase(data: dict, final: dict) -> str | None:
    """Sequence tasks: where the final train/val loss stand against the task's loss bounds (the
    conditions-for-grokking study); used for
    runs whose summary.json has no `loss_phase` (the grokking callback's own classification) of its own."""
    if data.get("format") != "sequence" or "train/loss" not in final or "val/loss" not in final:
        return None
    bounds = loss_bounds(data["p"], data["format"], data.get("loss_on", "answer"), tuple(data.get("operations", ["add"])))
    return classify_phase(_number(final["train/loss"]), _number(final["val/loss"]), bounds)


def _known_dtype(name: str) -> str | None:
    if name in ("job", SEED, "steps") or name.startswith("grok/"):
        return "Int64"
    if name == "grokked":
        return "boolean"
    if name in (*FINAL_METRICS, DEPTH, "wall_time_s") or name.startswith(("best/", "fourier/")):
        return "float64"
    return None


def _typed(column: pd.Series) -> pd.Series:
    """Integer columns stay integers with gaps (Int64), flags stay flags (boolean); floats stay floats."""
    if _known_dtype(str(column.name)):
        try:
            return column.astype(_known_dtype(str(column.name)))
        except (TypeError, ValueError):  # a run recorded something odd (a failed run's bad seed): keep it as is
            pass
    values = column.dropna()
    if len(values) and all(isinstance(v, bool) for v in values):
        return column.astype("boolean")
    if len(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return column.astype("Int64")
    if len(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return column.astype("float64")
    return column


def sweep_table(jobs: Sequence[Job], root: Path, baseline: str | None = None) -> pd.DataFrame:
    """`baseline`: `KEY=VALUE`, the rows steps to 95 % are divided by (analysis/derived.py; None: its default)."""
    swept = swept_keys(jobs)
    rows = [_row(job, root, swept) for job in jobs]
    best = [f"best/{name}" for name in BEST_OF]
    finals = [column for name in FINAL_METRICS for column in (name, f"best/{name}") if column in (name, *best)]
    order = ["run", "job", *swept, SEED, "status", "steps", *finals]
    order += list(dict.fromkeys(k for r in rows for k in r if k.startswith("grok/")))
    order += ["grokked", "dynamics", "loss_phase", DEPTH]
    order += list(dict.fromkeys(k for r in rows for k in r if k.startswith("fourier/")))
    order += list(dict.fromkeys(k for r in rows for k in r if k.startswith("circuits/")))
    order += ["wall_time_s", "init_fingerprint", "error"]
    columns = {name: pd.Series([row.get(name) for row in rows], dtype=object, name=name) for name in order}
    optional = [*FINAL_METRICS[2:], *best, DEPTH, "error", "dynamics", "loss_phase", "init_fingerprint"]  # when some run has them
    table = pd.DataFrame({name: _typed(values) for name, values in columns.items()
                          if name not in optional or values.notna().any()})
    table.attrs["swept"] = swept
    return with_baseline_ratios(table, baseline)


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{value:.1f}"  # a float stays visibly a float: 1.0, not 1
        return f"{value:.0f}" if 1e4 <= abs(value) < 1e15 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; floats to 4 significant digits, empty cells for values a run does not have."""
    header = [_cell(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def print_report(table: pd.DataFrame, written: Sequence[Path]) -> None:
    """What the analysis commands print: the table as Markdown, then the files they wrote."""
    print(to_markdown(table))
    print("wrote:")
    for path in written:
        print(f"  {path}")


def write_table(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "table.csv", out_dir / "table.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(table))
    return [csv_path, md_path]

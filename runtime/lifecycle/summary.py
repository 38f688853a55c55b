"""`summary.json`: what an analysis reads first about a finished (or failed) run."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

from lightning.pytorch.loggers import CSVLogger

from analysis.grokking_curve import draw_grokking_curve
from runtime.logs.loggers import finish_wandb, publish_summary


def _clean(value: Any) -> Any:
    """JSON-safe: tensors to floats, non-finite floats to strings (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write atomically, so a crash never leaves a half-written summary."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's summary.json; {} when the run never wrote one (a hard kill) or it is not valid JSON."""
    file = Path(run_dir) / "summary.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError:  # written atomically, so only a foreign or hand-edited file gets here
        return {}


def finite_or_null(metrics: dict[str, float]) -> dict[str, float | None]:
    """Final metrics for summary.json: a non-finite value is null and named under `non_finite`, never passed off
    as a number (JSON has no NaN)."""
    values = {key: float(value) for key, value in metrics.items()}
    bad = [key for key, value in values.items() if not math.isfinite(value)]
    return {key: (None if key in bad else value) for key, value in values.items()} | (
        {"non_finite": bad} if bad else {})


def grok_summary(grok) -> dict[str, Any]:
    """What a run's `GrokkingTime` (or None) contributes to its summary."""
    part: dict[str, Any] = {"grok": dict(grok.steps) if grok else {},
                            "grokked": bool(grok and grok.grokked_step is not None)}
    if grok and grok.bounds is not None:
        part |= {"loss_bounds": grok.bounds._asdict(), "loss_phase": grok.phase}
    return part


def callback_parts(callbacks: Iterable) -> dict[str, Any]:
    """What callbacks add to summary.json: a callback with `summary_part()` (a dict, or None for nothing) adds it
    under its `summary_key` (e.g. an analysis of the final weights under `interpretability`)."""
    parts = {}
    for callback in callbacks:
        if callable(getattr(callback, "summary_part", None)) and (part := callback.summary_part()):
            parts[callback.summary_key] = part
    return parts


def close_summary(out: Path, summary: dict[str, Any], loggers: Iterable, started: float, write: bool = True) -> float:
    """Stamp wall time and speed, write `summary.json`, hand the numbers to the loggers and end their runs.
    Returns the wall time in seconds."""
    wall = time.time() - started
    summary["wall_time_s"] = round(wall, 2)
    if "steps" in summary:  # a resumed run's speed counts the steps of this launch only
        summary["session_steps"] = summary["steps"] - summary.get("resumed_from_step", 0)
        summary["steps_per_s"] = round(summary["session_steps"] / wall, 2)
    if write:
        write_summary(out / "summary.json", summary)
    try:
        publish_summary(loggers, summary)
    finally:
        finish_wandb(loggers)
    if write:
        draw_end_figures(out, summary, loggers)
    return wall


def draw_end_figures(out: Path, summary: dict[str, Any], loggers: Iterable) -> None:
    """The figures every run leaves in `plots/` when it ends (analysis/grokking_curve.py), drawn from its files:
    nothing during training. A figure that cannot be drawn is one warning line; the run's outcome stands."""
    for logger in loggers:  # the last rows of metrics.csv onto the disk
        if isinstance(logger, CSVLogger):
            logger.save()
    try:
        draw_grokking_curve(out, summary)
    except Exception as err:  # noqa: BLE001 - a figure never fails a run that has ended
        print(f"[grokking-lab] warning: {out / 'plots'}: grokking curve not drawn ({type(err).__name__}: {err})",
              flush=True)

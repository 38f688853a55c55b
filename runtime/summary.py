"""`summary.json`: what an analysis reads first about a finished (or failed) run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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

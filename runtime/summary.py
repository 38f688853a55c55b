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
    return json.loads((Path(run_dir) / "summary.json").read_text())

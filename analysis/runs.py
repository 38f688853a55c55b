"""One run folder as an analysis reads it: composed config, overrides, summary.json and the merged metrics.

Everything comes from the files `launch.py` leaves behind (DESIGN.md, "A run's folder"); nothing is recomputed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import OmegaConf

from runtime.errors import require
from runtime.summary import read_summary

RUN_FILES = ("summary.json", "metrics.csv", ".hydra/config.yaml", ".hydra/overrides.yaml")
STATUS_NO_SUMMARY = "missing summary"  # the folder exists but the run never wrote summary.json (killed hard)


@dataclass
class Run:
    """What one run folder holds. `metrics` has one row per optimiser step (see `read_metrics`)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"step": pd.Series(dtype="int64")}))

    @property
    def status(self) -> str:
        return self.summary.get("status", STATUS_NO_SUMMARY)

    def last(self, metric: str) -> float | None:
        """The last logged value of `metric` (metrics are sparse: not every step logs every metric)."""
        if metric not in self.metrics:
            return None
        values = self.metrics[metric].dropna()
        return float(values.iloc[-1]) if len(values) else None


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def load_run(path: str | Path) -> Run:
    """Read a run folder; files a hard-killed run never wrote are left empty instead of failing."""
    path = Path(path)
    require(path.is_dir() and is_run_dir(path), "path", str(path),
            f"a run folder (holding one of {', '.join(RUN_FILES)})")
    summary = read_summary(path)
    override_file = path / ".hydra" / "overrides.yaml"
    if override_file.is_file():
        override_list = OmegaConf.to_container(OmegaConf.load(override_file)) or []
    else:
        override_list = summary.get("overrides", [])
    return Run(path=path, config=read_config(path), overrides=parse_overrides(override_list), summary=summary,
               metrics=read_metrics(path))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The composed config, with `${hydra:...}` resolved against the run's own `.hydra/hydra.yaml`."""
    config_file, hydra_file = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml"
    if not config_file.is_file():
        return {}
    # the hydra resolver reads global state set only inside a launch; point it at the saved hydra node instead
    config = OmegaConf.create(config_file.read_text().replace("${hydra:", "${hydra."))
    if hydra_file.is_file():
        config = OmegaConf.merge(config, OmegaConf.load(hydra_file))
    resolved: dict[str, Any] = {}
    for key in config:
        if key == "hydra":
            continue
        try:
            node = config[key]
            resolved[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except Exception:  # an interpolation that cannot resolve outside the launch: keep it as written
            resolved[key] = OmegaConf.to_container(config, resolve=False)[key]
    return resolved


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["optimizer.weight_decay=0.5", "+x.y=[1,2]"]` -> `{"optimizer.weight_decay": 0.5, "x.y": "[1,2]"}`.

    Values are typed as Hydra types them (int, float, bool, str, None); lists and dicts keep their text so they
    can be compared and shown in a table. A deletion (`~key`) maps to None.
    """
    parser = OverridesParser.create()
    parsed: dict[str, Any] = {}
    for line in overrides:
        override = parser.parse_override(str(line))
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        if override.type == OverrideType.DEL:
            parsed[key] = None
        elif override.is_sweep_override():
            parsed[key] = override.get_value_element_as_str()
        else:
            value = override.value()
            parsed[key] = override.get_value_element_as_str() if isinstance(value, (list, dict)) else value
    return parsed


def metrics_files(run_dir: Path) -> list[Path]:
    """`metrics.csv` in the folder (this project's CSVLogger), else Lightning's `*/version_<n>/metrics.csv`."""
    direct = run_dir / "metrics.csv"
    if direct.is_file():
        return [direct]

    def version(path: Path) -> int:
        number = re.fullmatch(r"version_(\d+)", path.parent.name)
        return int(number.group(1)) if number else -1

    return sorted(run_dir.glob("*/version_*/metrics.csv"), key=version) or sorted(run_dir.glob("*/metrics.csv"))


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """One row per logged step, Lightning's sparse rows (train and val logged separately) merged.

    `step` counts optimiser steps done (metrics.csv's 0-based `step` + 1), the count summary.json's `steps` and
    `grok/*` use. A step logged twice (a resumed run appends) keeps the later value of each metric.
    """
    frames = []
    for file in metrics_files(Path(run_dir)):
        try:
            frames.append(pd.read_csv(file))
        except pd.errors.EmptyDataError:
            continue
    frames = [f for f in frames if "step" in f and len(f)]
    if not frames:
        return pd.DataFrame({"step": pd.Series(dtype="int64")})
    raw = pd.concat(frames, ignore_index=True).drop(columns=["epoch"], errors="ignore")
    merged = raw.groupby("step", sort=True).last()  # last non-null value of each column within a step
    merged.index = merged.index.astype("int64") + 1
    return merged.reset_index()

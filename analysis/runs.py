"""One run folder as an analysis reads it: composed config, overrides, summary.json and the merged metrics.

Everything comes from the files `launch.py` leaves behind (docs/architecture.md, "A run's folder"); nothing is recomputed.
A damaged file (a run killed mid-write, two runs writing one folder) never stops the analysis: what can be read is
kept, and what is wrong is reported as a warning naming the file (logger `analysis`, and `Run.problems`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.errors import require
from core.run_name import register_run_name

RUN_FILES = ("summary.json", "metrics.csv", ".hydra/config.yaml", ".hydra/overrides.yaml")
STATUS_NO_SUMMARY = "missing summary"  # the folder exists but the run never wrote summary.json (killed hard)
STATUS_BAD_SUMMARY = "unreadable summary"  # summary.json is there but cut short, empty or without a status
YAML_ERRORS = (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError)

logger = logging.getLogger("analysis")


def report(problems: list[str] | None, file: Path, what: str) -> None:
    """A damaged file: logged as a warning (the CLI prints it) and, when given, kept in `problems`."""
    message = f"{file}: {what}"
    if problems is not None:
        problems.append(message)
    logger.warning(message)


@dataclass
class Run:
    """What one run folder holds. `metrics` has one row per optimiser step (see `read_metrics`); `choices` the option
    each config group took (`model/ffn: moe`, Hydra's runtime choices); `problems` lists the damage found in its
    files (one `<file>: <what>` line each)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"step": pd.Series(dtype="int64")}))
    summary_damaged: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if "status" in self.summary:
            return self.summary["status"]
        return STATUS_BAD_SUMMARY if self.summary_damaged else STATUS_NO_SUMMARY

    def last(self, metric: str) -> float | None:
        """The last logged value of `metric` (metrics are sparse: not every step logs every metric)."""
        if metric not in self.metrics:
            return None
        values = self.metrics[metric].dropna()
        return float(values.iloc[-1]) if len(values) else None


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def load_run(path: str | Path) -> Run:
    """Read a run folder; files a hard-killed run never wrote are left empty, damaged ones are reported and read
    as far as they can be, instead of failing."""
    path = Path(path)
    require(path.is_dir() and is_run_dir(path), "path", str(path),
            f"a run folder (holding one of {', '.join(RUN_FILES)})")
    problems: list[str] = []
    summary, summary_damaged = read_run_summary(path, problems)
    saved_hydra = read_hydra(path, problems)
    return Run(path=path, config=read_config(path, problems, saved_hydra),
               overrides=read_overrides(path, summary, problems), choices=read_choices(saved_hydra),
               summary=summary, metrics=read_metrics(path, problems), summary_damaged=summary_damaged,
               problems=problems)


def read_run_summary(run_dir: Path, problems: list[str] | None = None) -> tuple[dict[str, Any], bool]:
    """summary.json and whether it is damaged: ({}, False) when the run never wrote one; a file cut short, empty or
    without a status is reported, and its run gets the status `unreadable summary`."""
    file = run_dir / "summary.json"
    if not file.is_file():
        return {}, False
    consequence = f"status '{STATUS_BAD_SUMMARY}'"
    try:
        text = file.read_text()
    except UnicodeDecodeError:
        report(problems, file, f"is not text: {consequence}")
        return {}, True
    if not text.strip():
        report(problems, file, f"is empty: {consequence}")
        return {}, True
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as err:
        report(problems, file, f"is not valid JSON ({err.msg} at line {err.lineno}; cut short?): {consequence}")
        return {}, True
    if not isinstance(summary, dict):
        report(problems, file, f"holds a JSON {type(summary).__name__}, not an object: {consequence}")
        return {}, True
    if "status" not in summary:
        report(problems, file, f"has no status: {consequence}")
        return summary, True
    return summary, False


def read_yaml(file: Path, problems: list[str] | None = None) -> Any:
    """A YAML file as OmegaConf reads it; None, reported, when it is damaged."""
    try:
        return OmegaConf.load(file)
    except YAML_ERRORS as err:
        report(problems, file, f"is not valid YAML ({str(err).splitlines()[0]}): ignored")
        return None


def read_overrides(run_dir: Path, summary: dict[str, Any], problems: list[str] | None = None) -> dict[str, Any]:
    """The run's overrides (`.hydra/overrides.yaml`, else the copy in summary.json), parsed; lines that do not
    parse are left out and reported."""
    file = run_dir / ".hydra" / "overrides.yaml"
    saved = read_yaml(file, problems) if file.is_file() else None
    if saved is None:
        file, saved = run_dir / "summary.json", summary.get("overrides")
    lines = (OmegaConf.to_container(saved) if OmegaConf.is_config(saved) else saved) or []
    if not isinstance(lines, list):
        report(problems, file, "overrides are not a list: ignored")
        return {}
    try:
        return parse_overrides(lines)
    except HydraException:
        parsed: dict[str, Any] = {}
        for line in lines:
            try:
                parsed |= parse_overrides([line])
            except HydraException:
                report(problems, file, f"override {str(line)!r} does not parse: ignored")
        return parsed


def read_hydra(run_dir: Path, problems: list[str] | None = None) -> DictConfig | None:
    """The run's saved Hydra node (`.hydra/hydra.yaml`); None when it is absent or damaged (reported)."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    saved = read_yaml(hydra_file, problems) if hydra_file.is_file() else None
    return saved if isinstance(saved, DictConfig) else None


def read_choices(saved_hydra: DictConfig | None) -> dict[str, Any]:
    """{config group: the option the run took} (`model/ffn: moe`), from the saved Hydra node; {} without one."""
    choices = OmegaConf.select(saved_hydra, "hydra.runtime.choices") if saved_hydra is not None else None
    return {str(k): v for k, v in OmegaConf.to_container(choices).items()} if isinstance(choices, DictConfig) else {}


def read_config(run_dir: Path, problems: list[str] | None = None,
                saved_hydra: DictConfig | None = None) -> dict[str, Any]:
    """The composed config, with `${hydra:...}` resolved against the run's own saved Hydra node (`read_hydra`)."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return {}
    # the hydra resolver reads global state set only inside a launch; point it at the saved hydra node instead
    try:
        config = OmegaConf.create(config_file.read_text().replace("${hydra:", "${hydra."))
    except YAML_ERRORS as err:
        report(problems, config_file, f"is not valid YAML ({str(err).splitlines()[0]}): config ignored")
        return {}
    if not isinstance(config, DictConfig):
        report(problems, config_file, "is not a mapping: config ignored")
        return {}
    if saved_hydra is not None:
        config = OmegaConf.merge(config, saved_hydra)
    register_run_name()  # `name` is `${run_name:...}`, whose resolver a launch registers
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


def read_metrics(run_dir: str | Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One row per logged step, Lightning's sparse rows (train and val logged separately) merged.

    `step` counts optimiser steps done (metrics.csv's 0-based `step` + 1), the count summary.json's `steps` and
    `grok/*` use. A step logged twice (a resumed run appends) keeps the later value of each metric. Damaged rows
    are left out and reported (see `read_metrics_file`).
    """
    frames = [read_metrics_file(file, problems) for file in metrics_files(Path(run_dir))]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({"step": pd.Series(dtype="int64")})
    raw = pd.concat(frames, ignore_index=True).drop(columns=["epoch"], errors="ignore")
    merged = raw.groupby("step", sort=True).last()  # last non-null value of each column within a step
    merged.index = merged.index.astype("int64") + 1
    return merged.reset_index()


def read_metrics_file(file: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One metrics.csv as numbers: `step` (int) and one float column per other header name.

    A run killed mid-write leaves its last line cut short (or NUL bytes); two runs writing one folder leave rows of
    another length than the header, or text where numbers belong. Such rows are dropped and the file reported once,
    with how many rows were kept. A file with nothing readable gives an empty frame, reported unless header-only.
    """
    empty = pd.DataFrame({"step": pd.Series(dtype="int64")})
    text = file.read_bytes().decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]  # blank lines are not rows
    torn = bool(lines) and not text.endswith(("\n", "\r"))
    if not lines or (torn and len(lines) == 1):
        report(problems, file, "is empty: no metrics" if not lines else "header line is incomplete: no metrics")
        return empty
    header, rows = next(csv.reader([lines[0]])), lines[1:]
    if "step" not in header or len(set(header)) != len(header):
        report(problems, file, f"header {lines[0]!r} has no step column or repeats a name: no metrics")
        return empty
    reasons = []
    if torn:
        rows = rows[:-1]
        reasons.append("last line is incomplete")
    whole = [row for row in rows if row.count(",") == len(header) - 1]  # rows hold numbers only: no quoted commas
    if len(whole) < len(rows):
        reasons.append(f"{_rows(len(rows) - len(whole))} without the header's {len(header)} fields")
    values, bad = _numbers(whole, header)
    if bad.any():
        reasons.append(f"{_rows(int(bad.sum()))} with text where numbers belong or no integer step")
    values = values[~bad].reset_index(drop=True)
    if reasons:
        report(problems, file, f"{'; '.join(reasons)} (kept {len(values)} of {len(lines) - 1} rows)")
    return values.astype({"step": "int64"})


def _numbers(rows: list[str], header: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """The rows as floats (pandas' fast parser), and which rows hold text (NUL bytes included) or no integer step."""
    if rows:
        values = pd.read_csv(io.StringIO("\n".join(rows)), header=None, names=header, quoting=csv.QUOTE_NONE,
                             low_memory=False)
    else:
        values = pd.DataFrame(columns=header)
    bad = pd.Series(False, index=values.index)
    for name in values.columns:
        if not pd.api.types.is_numeric_dtype(values[name]):  # the parser found text in this column
            numbers = pd.to_numeric(values[name], errors="coerce")
            bad |= numbers.isna() & values[name].notna()
            values[name] = numbers
    values = values.astype("float64")
    return values, bad | values["step"].isna() | (values["step"] % 1 != 0)


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"

"""`python -m reproduce compare A B`: which headline figures moved between two reports beyond the seeds' spread.

A figure moved when each report's median lies outside the other's seed range (widened by the headline's stated
tolerance), when it was reached in one report and not in the other, for a named outcome (a run's dynamics) when
the most common label changed, and for a trend when its verdict changed. Prints one row per headline both reports
measured, with each report's commit and device; exits 1 when any moved (as `diff` does), 0 otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from core.errors import ConfigError, require
from reproduce.headlines import within


def read_report(path: Path) -> dict[str, Any]:
    file = path / "results.json" if path.is_dir() else path
    require(file.is_file(), "report", str(path), "a report folder holding results.json, or a results.json")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError("report", str(path), f"valid JSON ({err.msg} at line {err.lineno})") from None


def moved(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """Why headline `b` differs from `a` beyond the seeds' spread, or None."""
    if isinstance(a.get("values"), Mapping) or isinstance(b.get("values"), Mapping):  # a trend: its verdict
        return None if a["verdict"] == b["verdict"] else f"{a['verdict']} -> {b['verdict']}"
    if a.get("median") is None and b.get("median") is None:
        return None
    if (a.get("median") is None) != (b.get("median") is None):
        return "reached in one only"
    if isinstance(a["median"], str) or isinstance(b["median"], str):
        return None if a["median"] == b["median"] else "another outcome"
    rel, abs_ = max(a.get("rel", 0.0), b.get("rel", 0.0)), max(a.get("abs", 0.0), b.get("abs", 0.0))

    def outside(x: float, other: Mapping[str, Any]) -> bool:
        hi = other["hi"] if other.get("hi") is not None else float("inf")  # some seeds not reached
        return not within(x, other["lo"], hi, rel, abs_)

    if outside(b["median"], a) and outside(a["median"], b):
        return "lower" if b["median"] < a["median"] else "higher"
    return None


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[list[str], int]:
    """The comparison's lines and how many headlines moved."""
    lines = ["| study | headline | A | B | moved |", "|---|---|---|---|---|"]
    count = 0
    for study, entries in a.get("headlines", {}).items():
        theirs = {entry["claim"]: entry for entry in b.get("headlines", {}).get(study, [])}
        for entry in entries:
            other = theirs.get(entry["claim"])
            if other is None:
                continue
            why = moved(entry, other)
            count += why is not None
            lines.append(f"| {study} | {entry['claim']} | {entry['measured']} | {other['measured']} | "
                         f"{'**' + why + '**' if why else '-'} |")
    return lines, count


def facts(results: Mapping[str, Any]) -> str:
    commits = sorted({part.get("commit", "?") for part in results.get("parts", {}).values()})
    devices = sorted({part.get("device", "?") for part in results.get("parts", {}).values()})
    return f"commit {', '.join(commits) or '?'}; {', '.join(devices) or '?'}"


def main(path_a: Path, path_b: Path) -> int:
    a, b = read_report(path_a), read_report(path_b)
    lines, count = compare(a, b)
    print(f"A: {path_a} ({facts(a)})")
    print(f"B: {path_b} ({facts(b)})")
    print("\n".join(lines))
    print(f"{count} headline figure(s) moved beyond the seeds' spread" if count else "no headline figure moved "
          "beyond the seeds' spread")
    return 1 if count else 0

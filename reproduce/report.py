"""report.md and its figures, written from results.json alone: one section per study (its headline table, its
figure, its runs and the exact commands), in suite order. A study none of whose parts has run yet says so."""
from __future__ import annotations

import math
import shlex
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.plots import new_figure, save, wants_log
from reproduce.headlines import bound, evaluate_study, fmt
from reproduce.records import steps_text
from reproduce.studies import all_studies
from reproduce.suite import Study

HOW_TO_READ = ("How to read it: docs/reproductions.md, 'The reproduction suite'. Verdicts: the source's figure lies "
               "within the seeds' range (widened by the tolerance the study states) or not; 'not reached in budget' "
               "when the median seed did not reach the threshold in the steps it had; '> N' a run cut at N steps.")


def headlines_of(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every study's headline figures over the records results.json holds (studies without records left out)."""
    out = {}
    for study in all_studies():
        records = [r for r in results["runs"] if r["study"] == study.name]
        if records:
            out[study.name] = evaluate_study(study.headlines, records)
    return out


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def headline_table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| headline | source | measured: median (lowest to highest) | seeds | verdict |",
             "|---|---|---|---|---|"]
    for entry in entries:
        source = entry["source_text"] if entry["source"] is not None else "-"
        quote = f"{source}: \"{entry['quote']}\" ({entry['where']})" if entry["quote"] not in ("-", "") else \
            f"{source} ({entry['where']})"
        seeds = ", ".join(map(str, entry["seeds"])) or "-"
        lines.append(f"| {cell(entry['claim'])} | {cell(quote)} | {cell(entry['measured'])} | {seeds} | "
                     f"{cell(entry['verdict'])} |")
    return lines


def run_table(records: Sequence[Mapping[str, Any]], measures: Sequence[str]) -> list[str]:
    head = ["run", "seed", "status", "steps", *measures, "wall s", "folder"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for record in records:
        name = " ".join(f"{k}={fmt(v)}" for k, v in record["values"].items())
        values = [fmt(record["measured"].get(m)) for m in measures]
        wall = record.get("wall_time_s")
        lines.append("| " + " | ".join(cell(x) for x in [
            name, record["seed"], record["status"], steps_text(record), *values,
            f"{wall:.0f}" if wall is not None else "-", record.get("folder") or "-"]) + " |")
    return lines


def part_lines(name: str, entry: Mapping[str, Any]) -> list[str]:
    wall = entry.get("wall_s")
    estimate = entry.get("estimate_s")
    said = (f"part `{name}`: {entry['size']} size, commit {entry['commit']}, {entry['device']}, {entry['started']}, "
            f"{wall / 60:.1f} min" + (f" (estimated {estimate / 60:.1f})" if estimate else "")
            + f" of a {entry['budget_s'] / 60:.1f}-minute budget")
    lines = [f"- {said}"]
    for process in entry["processes"]:
        ended = process.get("stopped") or f"exit {process.get('returncode')}"
        lines.append(f"  - `{process['name']}` ({ended}): `{shlex.join(process['command'])}`")
    return lines


def figure(study: Study, records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """The study's curve: its figure measure over its swept value, one dot per seed (hollow: a threshold not
    reached, drawn at the steps the run had), the median joined by a line; one series per `figure_hue`."""
    points: dict[Any, dict[Any, list[tuple[float, bool]]]] = {}
    for record in records:
        x = record["values"].get(study.figure_x)
        value = record["measured"].get(study.figure_y)
        if x is None or value is None or isinstance(value, str):
            continue
        hue = record["values"].get(study.figure_hue) if study.figure_hue else ""
        reached = bound(value) is None
        y = float(value) if reached else float(bound(value))
        points.setdefault(hue, {}).setdefault(x, []).append((y, reached))
    if not points:
        return None
    categorical = any(isinstance(x, str) for series in points.values() for x in series)
    order = sorted({x for series in points.values() for x in series}, key=lambda x: (isinstance(x, str), x))
    position = {x: i for i, x in enumerate(order)} if categorical else {x: x for x in order}
    fig = new_figure()
    axes = fig.add_subplot()
    for index, (hue, series) in enumerate(sorted(points.items(), key=lambda item: str(item[0]))):
        color = f"C{index}"
        xs = sorted(series, key=lambda x: position[x])
        medians = []
        for x in xs:
            for y, reached in series[x]:
                axes.scatter(position[x], y, color=color, facecolors=color if reached else "none", zorder=3)
            medians.append(statistics.median(y for y, _ in series[x]))
        axes.plot([position[x] for x in xs], medians, color=color, label=str(hue) if hue != "" else None)
    if categorical:
        axes.set_xticks(range(len(order)), [str(x) for x in order])
    elif wants_log(order):
        axes.set_xscale("log")
    ys = [y for series in points.values() for values in series.values() for y, _ in values]
    if wants_log(ys):
        axes.set_yscale("log")
    axes.set_xlabel(study.figure_x)
    axes.set_ylabel(study.figure_y)
    axes.set_title(f"{study.name}: {study.figure_y} (hollow: not reached)", fontsize=10)
    if study.figure_hue:
        axes.legend(title=study.figure_hue, fontsize=8)
    return save(fig, path)


def study_section(study: Study, results: Mapping[str, Any], out: Path) -> list[str]:
    records = [r for r in results["runs"] if r["study"] == study.name]
    lines = [f"## {study.title} (`{study.name}`)", "", f"Source: {study.source}.", ""]
    ran = [part.name for part in study.parts if part.name in results["parts"]]
    missing = [part.name for part in study.parts if part.name not in results["parts"]]
    if not records:
        return [*lines, f"Not run yet (parts: {', '.join(missing)}).", ""]
    lines += headline_table(results["headlines"].get(study.name) or evaluate_study(study.headlines, records))
    lines += ["", *(f"- {note}" for note in study.notes)]
    if missing:
        lines.append(f"- Parts not run yet: {', '.join(missing)}.")
    path = figure(study, records, out / "figures" / f"{study.name}.png")
    if path is not None:
        lines += ["", f"![{study.name}](figures/{path.name})"]
    lines += ["", f"Runs ({len(records)}):", "", *run_table(records, list(study.measures)), "",
              "Parts and their exact commands:", ""]
    for name in ran:
        lines += part_lines(name, results["parts"][name])
    return [*lines, ""]


def write_report(out: Path, results: Mapping[str, Any]) -> Path:
    lines = ["# Reproduction suite report", "",
             f"Size `{results['size']}`; results.json holds one record per run. {HOW_TO_READ}", ""]
    counts: dict[str, int] = {}
    for entry in results["headlines"].values():
        for headline in entry:
            counts[headline["verdict"]] = counts.get(headline["verdict"], 0) + 1
    if counts:
        lines += ["Verdicts: " + ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) + ".", ""]
    for study in all_studies():
        lines += study_section(study, results, out)
    file = out / "report.md"
    file.write_text("\n".join(lines))
    return file


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

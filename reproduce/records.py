"""results.json: one record per planned run (its config, commit, device, steps, grokking steps, final metrics, wall
time and the values its study measures), one entry per part (commands, processes, budget) and the headline
figures. A part run again replaces its records and its entry; the others stay as they were.

A run is recorded whatever happened to it: a run the deadline stopped keeps its status (`interrupted`) and the
steps it had ("> N steps" in the report); a process killed hard, or never started, still leaves a record with the
status `no summary` or `not started` and the steps its metrics.csv reached.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.runs import load_run
from reproduce.packing import ROOT, Process, member_folders
from reproduce.scheduler import NOT_STARTED, Outcome
from reproduce.suite import RunSpec, Study

FORMAT = 1
NO_SUMMARY = "no summary"  # the process ended without the run's summary.json (killed hard, or failed to start)


def commit() -> str:
    """The project's commit, `+dirty` when the worktree has changes; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def device() -> str:
    """The accelerator the runs will find: the GPU's name (nvidia-smi, without touching CUDA here), else the CPU."""
    if shutil.which("nvidia-smi"):
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=30).stdout.strip().splitlines()
            if names:
                return f"{names[0]} (x{len(names)})" if len(names) > 1 else names[0]
        except (OSError, subprocess.SubprocessError):
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}"


def run_record(study: Study, part: str, process: Process, spec: RunSpec, folder: Path | None, outcome: Outcome,
               out: Path, facts: Mapping[str, Any]) -> dict[str, Any]:
    """The record of one planned run, read from its run folder (or what is known without one)."""
    record: dict[str, Any] = {
        "study": study.name, "part": part, "process": process.name, "values": dict(spec.values), "seed": spec.seed,
        "experiment": spec.experiment, "max_steps": spec.steps, "source_steps": spec.source_steps,
        "command": process.command, **facts, "folder": str(folder.relative_to(out)) if folder else None,
        "stopped": outcome.stopped, "process_wall_s": round(outcome.wall_s, 1) if outcome.wall_s else None,
    }
    run = load_run(folder) if folder is not None and (folder / ".hydra").is_dir() else None
    if run is None:
        status = "not started" if outcome.stopped == NOT_STARTED else NO_SUMMARY
        return record | {"status": status, "steps": 0, "overrides": [*spec.launch_overrides(), f"seed={spec.seed}"],
                         "config": None, "grok": {}, "final": {}, "wall_time_s": None,
                         "measured": {name: None for name in study.measures}}
    summary = run.summary
    logged = int(run.metrics["step"].max()) if len(run.metrics) else 0
    steps = int(summary.get("steps", logged) or 0)
    status = summary.get("status") or NO_SUMMARY
    if status == "running":  # killed before it could write its ending
        status = NO_SUMMARY
    return record | {
        "status": status, "steps": steps, "overrides": summary.get("overrides") or list(run.overrides),
        "config": run.config or None, "run_device": summary.get("device"), "grok": summary.get("grok", {}),
        "final": summary.get("final", {}), "wall_time_s": summary.get("wall_time_s"),
        "error": summary.get("error"), "signal": summary.get("signal"),
        "measured": {name: measure.of(run, steps) for name, measure in study.measures.items()},
    }


def collect(study: Study, part: str, processes: Sequence[Process], outcomes: Sequence[Outcome], out: Path,
            facts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per planned run of the part, in plan order."""
    records = []
    for process, outcome in zip(processes, outcomes):
        folders = member_folders(process)
        for index, spec in enumerate(process.runs):
            records.append(run_record(study, part, process, spec, folders.get(index), outcome, out, facts))
    return records


def steps_text(record: Mapping[str, Any]) -> str:
    """`4,100`, `> 5,300 (interrupted at the deadline)` for a run cut short, `20,000 (cap; source 50,000)`."""
    steps = f"{record['steps']:,}"
    if record.get("stopped"):
        return f"> {steps} ({record['status']}: {record['stopped']})"
    if record["status"] in ("failed", NO_SUMMARY, "not started"):
        return f"> {steps} ({record['status']})"
    if record["steps"] >= record["max_steps"] and record.get("source_steps") and \
            record["max_steps"] < record["source_steps"]:
        return f"{steps} (cap; source {record['source_steps']:,})"
    return steps


def load_results(out: Path) -> dict[str, Any]:
    file = out / "results.json"
    if not file.is_file():
        return {"format": FORMAT, "size": None, "parts": {}, "runs": [], "headlines": {}}
    return json.loads(file.read_text())


def replace_part(results: dict[str, Any], part: str, entry: dict[str, Any],
                 records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The results with `part`'s entry and records replaced (the other parts' untouched)."""
    kept = [record for record in results["runs"] if record["part"] != part]
    return {**results, "parts": {**results["parts"], part: entry}, "runs": kept + list(records)}


def save_results(out: Path, results: Mapping[str, Any]) -> Path:
    file = out / "results.json"
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(file)
    return file

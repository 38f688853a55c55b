"""Run parts: make the init files their runs start from, run their processes under a wall-clock deadline
(reproduce/scheduler.py), read every planned run back into results.json (replacing only those parts' records and
entries), and write report.md again. Every run folder is a normal run folder, under `<out>/runs/<part>/`.

At the GPU size each part has its own budget and runs after the previous one. At the CPU size the toy runs are
bound by their start-up (imports, composing the config), not by their steps, so the parts share one schedule and one
budget: every process of every chosen part, two at a time, keeps both cores busy."""
from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from core.errors import ConfigError
from reproduce.plan import PartPlan
from reproduce.records import collect, commit, device, load_results, replace_part, save_results
from reproduce.report import headlines_of, write_report
from reproduce.scheduler import Job, Outcome, run_jobs
from reproduce.throughput import GRACE_S

CPU_GRACE_S = 15.0  # toy runs end their step and write their files within a second or two


def make_inits(plan: PartPlan) -> None:
    """The PyTorch-default init files the part's runs start from (`RunSpec.torch_init`), before any process."""
    from runtime.lifecycle.init_weights import save_torch_default_init

    for process in plan.processes:
        for spec in process.runs:
            if spec.seed in process.inits:
                save_torch_default_init(spec.launch_overrides(), spec.seed, process.inits[spec.seed])


def child_env(size: str) -> dict[str, str]:
    """The processes' environment: at CPU size one thread each, so that two share the 2 cores without fighting."""
    env = dict(os.environ)
    if size == "cpu":
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return env


def check_size(results: dict[str, Any], size: str, out: Path) -> None:
    if results.get("size") not in (None, size):
        raise ConfigError("--out", str(out), f"a new folder, or one of {results['size']}-size reports "
                                             f"(this one holds {results['size']}, not {size})")


def prepare(plan: PartPlan, out: Path) -> list[Job]:
    """A clean folder for the part (a part run again loses its old folders with its old records), its init files,
    and its jobs (named `<part>/<process>`, so that pooled parts never clash)."""
    part_dir = out / "runs" / plan.part.name
    if part_dir.exists():
        shutil.rmtree(part_dir)
    make_inits(plan)
    return [Job(f"{plan.part.name}/{p.name}", p.command, part_dir / "logs" / f"{p.name}.log") for p in plan.processes]


def record_part(plan: PartPlan, outcomes: Sequence[Outcome], out: Path, started: datetime, wall_s: float,
                budget_s: float, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Replace the part's records and entry in results.json, and write the report again; its records."""
    records = collect(plan.study, plan.part.name, plan.processes, outcomes, out, facts)
    entry = {**facts, "study": plan.study.name, "started": started.isoformat(timespec="seconds"),
             "wall_s": round(wall_s, 1), "budget_s": budget_s, "estimate_s": plan.estimate_s,
             "processes": [{"name": p.name, "command": p.command, "runs": len(p.runs), "returncode": o.returncode,
                            "stopped": o.stopped, "wall_s": round(o.wall_s, 1) if o.wall_s else None}
                           for p, o in zip(plan.processes, outcomes)]}
    results = replace_part(load_results(out), plan.part.name, entry, records)
    results["size"] = plan.size
    results["headlines"] = headlines_of(results)
    save_results(out, results)
    write_report(out, results)
    return records


def run_parts(plans: Sequence[PartPlan], out: Path, budget_s: float, say: Callable[[str], None] = print,
              grace_s: float | None = None, slots: int | None = None) -> list[dict[str, Any]]:
    """Run `plans` (all of one size): at the GPU size each within `budget_s` of wall time, one after another; at
    the CPU size all together within `budget_s`. `grace_s` and `slots` default to the size's. Their records, one
    per planned run, in plan order."""
    if not plans:
        return []
    size = plans[0].size
    check_size(load_results(out), size, out)
    out.mkdir(parents=True, exist_ok=True)
    grace = grace_s if grace_s is not None else (GRACE_S if size == "gpu" else CPU_GRACE_S)
    groups = [list(plans)] if size == "cpu" else [[plan] for plan in plans]
    records: list[dict[str, Any]] = []
    for group in groups:
        started, clock = datetime.now(timezone.utc), time.monotonic()
        jobs = [prepare(plan, out) for plan in group]
        names = ", ".join(plan.part.name for plan in group)
        say(f"[reproduce] {names}: {sum(map(len, jobs))} process(es), "
            f"{sum(len(p.runs) for plan in group for p in plan.processes)} run(s), budget {budget_s:.0f} s")
        outcomes = run_jobs([job for part_jobs in jobs for job in part_jobs], budget_s - (time.monotonic() - clock),
                            slots or group[0].slots, grace, env=child_env(size), say=say)
        facts = {"size": size, "commit": commit(), "device": device()}
        wall = time.monotonic() - clock
        for plan, part_jobs in zip(group, jobs):
            mine, outcomes = outcomes[:len(part_jobs)], outcomes[len(part_jobs):]
            records += record_part(plan, mine, out, started, wall, budget_s, facts)
    return records

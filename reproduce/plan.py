"""A part's plan: its processes (reproduce/packing.py) and, at the GPU size, each one's estimated wall time from
the GPU report's throughputs (reproduce/throughput.py); `--plan` prints it without running anything."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from reproduce.packing import Process, pack
from reproduce.suite import Part, Study
from reproduce.throughput import GRACE_S, SLOTS, Cost, part_estimate, process_cost, rate

CPU_SLOTS = 2  # processes at once at CPU size (one thread each)


@dataclass
class PartPlan:
    study: Study
    part: Part
    size: str
    processes: list[Process]
    costs: list[Cost] | None  # at the GPU size

    @property
    def estimate_s(self) -> float | None:
        return part_estimate(self.costs, SLOTS) if self.costs is not None else None

    @property
    def slots(self) -> int:
        return SLOTS if self.size == "gpu" else CPU_SLOTS

    def fits(self, budget_s: float) -> bool:
        """Whether every run ends before the deadline (the budget less the grace period SIGTERM leaves)."""
        return self.estimate_s is None or self.estimate_s <= budget_s - GRACE_S


def process_overrides(size: str) -> list[str]:
    """Overrides every process of a size gets: at CPU size one torch thread each (two processes share 2 cores)."""
    return [] if size == "gpu" else ["threads=1"]


def plan_part(study: Study, part: Part, size: str, out: Path) -> PartPlan:
    processes = pack(part.runs(size), out / "runs" / part.name, process_overrides(size))
    costs = None
    if size == "gpu":
        costs = [process_cost(p.runs[0].rate_key, len(p.runs), p.steps, p.shared) for p in processes]
    return PartPlan(study, part, size, processes, costs)


def describe(plan: PartPlan, budget_s: float) -> list[str]:
    """What `--plan` prints for a part: every process (its runs, model-steps, estimate) and its command."""
    lines = [f"## part {plan.part.name} (study {plan.study.name}, size {plan.size}): {plan.part.covers}"]
    total = 0
    for index, process in enumerate(plan.processes):
        model_steps = len(process.runs) * process.steps
        total += model_steps
        line = f"  {process.describe()}: {len(process.runs)} x {process.steps:,} steps = {model_steps:,} model-steps"
        if plan.costs is not None:
            cost = plan.costs[index]
            line += (f"; alone {cost.alone_s:.0f} s, GPU work {cost.gpu_s:.0f} s "
                     f"({process.runs[0].rate_key}: {rate(process.runs[0].rate_key).solo} steps/s alone)")
        lines.append(line)
        for spec in process.runs:
            cap = f" (cap; source {spec.source_steps:,})" if spec.capped else ""
            lines.append(f"      {spec.describe()}: {spec.steps:,} steps{cap}")
        lines.append(f"      $ {shlex.join(process.command)}")
    if plan.estimate_s is not None:
        verdict = "fits" if plan.fits(budget_s) else "DOES NOT FIT"
        lines.append(f"  => {total:,} model-steps; estimated GPU wall time {plan.estimate_s:.0f} s "
                     f"({plan.estimate_s / 60:.1f} min; {plan.slots} processes at once) against {budget_s:.0f} s "
                     f"less {GRACE_S:.0f} s of grace: {verdict}")
    else:
        lines.append(f"  => {total:,} model-steps (no GPU estimate at CPU size)")
    return lines


def print_plan(plans: Sequence[PartPlan], budget_s: float) -> None:
    for plan in plans:
        print("\n".join(describe(plan, budget_s)), flush=True)
        print()
    estimates = [p.estimate_s for p in plans if p.estimate_s is not None]
    if estimates:
        print(f"{len(plans)} parts, estimated {sum(estimates) / 60:.1f} minutes on one GPU in all "
              f"(longest part {max(estimates) / 60:.1f} min)")

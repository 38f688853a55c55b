"""Run a part's processes side by side under one wall-clock deadline.

Up to `slots` processes run at once (each in its own process group); the others wait for a free slot. At the
deadline every process still running gets SIGTERM (a run finishes its step, writes its checkpoint and
summary.json, and exits), and SIGKILL `grace_s` later if it has not ended by then; a process that never got a slot
is not started. Every process gets an outcome, whatever happened to it: nothing is dropped.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

NOT_STARTED = "not started before the deadline"
TERMINATED = "stopped at the deadline (SIGTERM)"
KILLED = "killed after the grace period (SIGKILL)"


@dataclass(frozen=True)
class Job:
    name: str
    command: list[str]
    log: Path


@dataclass
class Outcome:
    """How one process ended: its exit code (None when it never started), when it started and ended (seconds
    after the part began), and why it ended early (None when it ran to its own end)."""

    name: str
    returncode: int | None = None
    started_s: float | None = None
    ended_s: float | None = None
    stopped: str | None = None

    @property
    def wall_s(self) -> float | None:
        return None if self.started_s is None or self.ended_s is None else self.ended_s - self.started_s


def signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # it has ended meanwhile
        pass


def run_jobs(jobs: Sequence[Job], budget_s: float, slots: int, grace_s: float, env: dict[str, str] | None = None,
             cwd: Path | None = None, say: Callable[[str], None] = print, poll_s: float = 0.2) -> list[Outcome]:
    """Run `jobs`, at most `slots` at once, each writing its output to its log. SIGTERM at `budget_s - grace_s`
    after the start, SIGKILL at `budget_s`: the part is over within its budget. Outcomes in the order of `jobs`."""
    start = time.monotonic()
    deadline, kill_at = start + max(0.0, budget_s - grace_s), start + budget_s
    outcomes = {job.name: Outcome(job.name) for job in jobs}
    waiting, running = list(jobs), {}
    logs = []
    try:
        while waiting or running:
            now = time.monotonic()
            while waiting and len(running) < slots and now < deadline:
                job = waiting.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                log = open(job.log, "w")  # noqa: SIM115 - closed when the part ends
                logs.append(log)
                running[job.name] = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                                     env=env, start_new_session=True)
                outcomes[job.name].started_s = now - start
                say(f"[reproduce] started {job.name}")
            for name, process in list(running.items()):
                if process.poll() is not None:
                    outcome = outcomes[name]
                    outcome.returncode, outcome.ended_s = process.returncode, time.monotonic() - start
                    del running[name]
                    say(f"[reproduce] ended {name}: exit {process.returncode} after {outcome.wall_s:.0f} s"
                        + (f" ({outcome.stopped})" if outcome.stopped else ""))
            if now >= deadline:
                for job in waiting:
                    outcomes[job.name].stopped = NOT_STARTED
                    say(f"[reproduce] {job.name}: {NOT_STARTED}")
                waiting.clear()
                for name, process in running.items():
                    if outcomes[name].stopped is None:
                        outcomes[name].stopped = TERMINATED
                        say(f"[reproduce] deadline: SIGTERM to {name}")
                        signal_group(process, signal.SIGTERM)
                    elif now >= kill_at and outcomes[name].stopped == TERMINATED:
                        outcomes[name].stopped = KILLED
                        say(f"[reproduce] grace period over: SIGKILL to {name}")
                        signal_group(process, signal.SIGKILL)
            time.sleep(poll_s)
    except BaseException:  # Ctrl-C or an error here: leave no process behind
        for process in running.values():
            signal_group(process, signal.SIGTERM)
        for process in running.values():
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                signal_group(process, signal.SIGKILL)
        raise
    finally:
        for log in logs:
            log.close()
    return [outcomes[job.name] for job in jobs]

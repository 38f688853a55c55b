"""Which runs a folder holds, including the ones Hydra planned but that never left a folder.

A path is a run folder, a multirun folder (`multirun.yaml` + one folder per job) or any folder above such
folders (`runs/`, `runs/<experiment>/`). A multirun's planned jobs are re-expanded from its `multirun.yaml` with
Hydra's own basic-sweeper expansion, so a job whose folder is missing or empty still gets a row.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from analysis.runs import RUN_FILES, YAML_ERRORS, Run, is_run_dir, load_run, parse_overrides, read_yaml
from core.errors import require

STATUS_MISSING = "missing"  # planned by Hydra, but its folder is absent or empty
NOT_RUN_FOLDERS = {".hydra", "checkpoints", "plots", "wandb", "analysis", "__pycache__"}


@dataclass
class Job:
    """One row of a sweep: a loaded run, or a planned job with nothing on disk (`run` is None)."""

    path: Path
    number: int | None = None
    run: Run | None = None
    planned: dict[str, Any] = field(default_factory=dict)  # the overrides Hydra planned for it, when known

    @property
    def status(self) -> str:
        return self.run.status if self.run is not None else STATUS_MISSING

    @property
    def overrides(self) -> dict[str, Any]:
        return self.run.overrides if self.run is not None and self.run.overrides else self.planned


def find_jobs(path: str | Path, load: Callable[[Path], Run] = load_run) -> list[Job]:
    """Every run under `path`, in a stable order (sweep by sweep, by job number), each read by `load` (a cache's,
    analysis/run_cache.py, in the viewer)."""
    root = Path(path)
    require(root.exists(), "path", str(path), "an existing run, multirun or runs folder")
    require(root.is_dir(), "path", str(path), "a folder, not a file")
    jobs: list[Job] = []
    for folder, kind in _walk(root):
        if kind == "multirun":
            jobs += multirun_jobs(folder, load)
        else:
            jobs.append(Job(path=folder, number=_job_number(folder), run=load(folder)))
    require(bool(jobs), "path", str(path),
            f"a folder holding runs (a multirun.yaml, or folders with {' or '.join(RUN_FILES)})")
    return jobs


def _walk(root: Path) -> list[tuple[Path, str]]:
    """Multirun and run folders at or below `root`; the walk stops at the first one on each branch."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        here = Path(folder)
        if (here / "multirun.yaml").is_file():
            found.append((here, "multirun"))
            subfolders.clear()
        elif is_run_dir(here):
            found.append((here, "run"))
            subfolders.clear()
        else:
            subfolders[:] = sorted(s for s in subfolders if s not in NOT_RUN_FOLDERS)
    return found


def relative_name(path: Path, root: Path) -> str:
    """How a run is named in tables: its folder relative to the analysed path (the folder's name if it is that path)."""
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        return str(path)
    return relative.as_posix() if relative.parts else root.resolve().name


def _job_number(run_dir: Path) -> int | None:
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        try:
            number = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.job.num")
        except YAML_ERRORS:  # damaged: load_run reports it; the folder's name still tells the number
            number = None
        if isinstance(number, int):
            return number
    return int(run_dir.name) if run_dir.name.isdigit() else None


def planned_overrides(multirun_file: Path) -> list[list[str]] | None:
    """Each planned job's overrides, in job-number order; None when the sweep cannot be re-expanded here
    (another sweeper, or a sweep such as glob() that needs the config loader)."""
    config = read_yaml(multirun_file)  # damaged (reported): the job folders alone make the rows
    if not isinstance(config, DictConfig):
        return None
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    if not isinstance(sweeper, DictConfig) or not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        return expand_sweep(params, list(OmegaConf.select(config, "hydra.overrides.task") or []))
    except Exception:
        return None


def expand_sweep(params: list[str], arguments: list[str]) -> list[list[str]]:
    """Each job's overrides, in job-number order, as Hydra's basic sweeper expands a sweep preset's `params` and the
    command line's `arguments` (the command line wins where both set a key)."""
    overrides = OverridesParser.create().parse_overrides(params + arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def multirun_jobs(sweep_dir: Path, load: Callable[[Path], Run] = load_run) -> list[Job]:
    """The planned jobs and the job folders of one multirun, matched by job number."""
    planned = planned_overrides(sweep_dir / "multirun.yaml")
    on_disk: dict[int, Path] = {}
    unnumbered: list[Path] = []
    for folder, kind in _walk_below(sweep_dir):
        number = _job_number(folder)
        if number is None or number in on_disk:
            unnumbered.append(folder)
        else:
            on_disk[number] = folder
    count = len(planned) if planned is not None else max(on_disk, default=-1) + 1
    numbers = sorted(set(range(count)) | set(on_disk))
    jobs = []
    for number in numbers:
        plan = parse_overrides(planned[number]) if planned is not None and number < len(planned) else {}
        folder = on_disk.get(number)
        if folder is not None and is_run_dir(folder):
            jobs.append(Job(path=folder, number=number, run=load(folder), planned=plan))
        else:  # never started, or killed before Hydra wrote .hydra/
            jobs.append(Job(path=folder or sweep_dir / str(number), number=number, planned=plan))
    jobs += [Job(path=f, number=_job_number(f), run=load(f)) for f in unnumbered if is_run_dir(f)]
    return jobs


def _walk_below(sweep_dir: Path) -> list[tuple[Path, str]]:
    """Run folders below a multirun folder, and the empty job folders (a digit name, no run files)."""
    found = []
    for child in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name not in NOT_RUN_FOLDERS):
        runs = [(f, k) for f, k in _walk(child) if k == "run"]
        found += runs or ([(child, "empty")] if child.name.isdigit() else [])
    return found

"""Which runs share a process: runs that differ only in packable values (the seed, the learning rate, weight decay,
regulariser weights: `runtime.engines.members.PACKABLE`) are trained as one ensemble (`hydra/launcher=ensemble`);
every other run is a process of its own. Each process gets its command line and its folder.

A multirun sweeps the product of the values it is given, so an ensemble's members must form a grid (every seed with
every λ, say); runs that do not are split into one ensemble per combination of their non-seed values.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from analysis.runs import parse_overrides
from reproduce.suite import RunSpec
from runtime.engines.members import PACKABLE

ROOT = Path(__file__).resolve().parent.parent
REGULARIZER_WEIGHT = re.compile(r"regularizer\.\w+\.weight")


def is_packable(key: str) -> bool:
    return key in PACKABLE or bool(REGULARIZER_WEIGHT.fullmatch(key))


def split_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def packable_values(spec: RunSpec) -> dict[str, str]:
    """The run's packable settings as override text, the seed among them: {"seed": "0", "optimizer.lr": "1e-3"}."""
    values = {key: value for key, value in map(split_override, spec.launch_overrides()) if is_packable(key)}
    return {**values, "seed": str(spec.seed)}


def shared_overrides(spec: RunSpec) -> tuple[str, ...]:
    """Everything but the packable settings: runs with equal ones can share an ensemble."""
    return tuple(text for text in spec.launch_overrides() if not is_packable(split_override(text)[0]))


@dataclass
class Process:
    """One process of a part: a solo run, or an ensemble of runs that differ only in packable values."""

    name: str
    runs: list[RunSpec]
    folder: Path                                   # the run folder (solo) or the multirun folder (ensemble)
    command: list[str]
    inits: dict[int, Path] = field(default_factory=dict)  # seed -> PyTorch-default init file to make first

    @property
    def ensemble(self) -> bool:
        return "hydra/launcher=ensemble" in self.command

    @property
    def steps(self) -> int:
        return self.runs[0].steps

    @property
    def shared(self) -> tuple[str, ...]:
        return shared_overrides(self.runs[0])

    def describe(self) -> str:
        kind = f"ensemble of {len(self.runs)}" if self.ensemble else "solo"
        return f"{self.name} ({kind})"


def grid(members: Sequence[RunSpec]) -> bool:
    """Whether the members' packable values are every combination of their values (what a multirun sweeps)."""
    values = [packable_values(member) for member in members]
    keys = {key for value in values for key in value}
    if any(set(value) != keys for value in values):
        return False
    combos = {tuple(value[key] for key in sorted(keys)) for value in values}
    return len(combos) == len(values) == math.prod(len({value[key] for value in values}) for key in keys)


def ensemble_groups(runs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """The runs grouped into ensembles (each a grid) and solo runs (groups of one), in the order they come."""
    groups: dict[tuple[str, ...], list[RunSpec]] = {}
    solos: list[list[RunSpec]] = []
    for spec in runs:
        if spec.ensemble and not spec.torch_init:
            groups.setdefault((spec.rate_key, *shared_overrides(spec)), []).append(spec)
        else:
            solos.append([spec])
    packed: list[list[RunSpec]] = []
    for members in groups.values():
        if grid(members):
            packed.append(members)
            continue
        by_values: dict[tuple[tuple[str, str], ...], list[RunSpec]] = {}
        for member in members:
            others = tuple(sorted((k, v) for k, v in packable_values(member).items() if k != "seed"))
            by_values.setdefault(others, []).append(member)
        packed += list(by_values.values())
    return packed + solos


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80]


def group_name(index: int, members: Sequence[RunSpec]) -> str:
    """`03-fraction0.3-seeds0-7`: the values the members share, then their seeds."""
    common = {k: v for k, v in members[0].values.items() if all(m.values.get(k) == v for m in members)}
    seeds = sorted({m.seed for m in members})
    seed_text = f"seed{seeds[0]}" if len(seeds) == 1 else (
        f"seeds{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else
        "seeds" + "_".join(map(str, seeds)))
    words = [members[0].experiment, *(f"{k}{v}" for k, v in common.items()), seed_text]
    return f"{index:02d}-{slug('-'.join(words))}"


def sweep_argument(key: str, values: Sequence[str]) -> str:
    unique = list(dict.fromkeys(values))
    return f"{key}={','.join(unique)}"


def pack(runs: Sequence[RunSpec], part_dir: Path, extra: Sequence[str] = ()) -> list[Process]:
    """The processes that run `runs`, with folders under `part_dir`; `extra`: overrides every process gets (e.g.
    one CPU thread each)."""
    processes = []
    for index, members in enumerate(ensemble_groups(runs), start=1):
        name = group_name(index, members)
        folder = part_dir / name
        python = [sys.executable, str(ROOT / "launch.py")]
        if len(members) == 1:  # an ensemble of one gains nothing: a solo run
            spec = members[0]
            inits = {spec.seed: part_dir / "inits" / f"seed{spec.seed}.pt"} if spec.torch_init else {}
            init = [f"init_from={inits[spec.seed]}"] if inits else []
            command = [*python, *spec.launch_overrides(), f"seed={spec.seed}", *init, *extra,
                       f"hydra.run.dir={folder}"]
            processes.append(Process(name, list(members), folder, command, inits))
            continue
        values = [packable_values(member) for member in members]
        keys = list(dict.fromkeys(key for value in values for key in value))
        fixed = [f"{k}={values[0][k]}" for k in keys if k != "seed" and len({v[k] for v in values}) == 1]
        swept = [sweep_argument(k, [v[k] for v in values]) for k in keys
                 if k == "seed" or len({v[k] for v in values}) > 1]
        command = [*python, "-m", *shared_overrides(members[0]), *fixed, *swept, *extra, "hydra/launcher=ensemble",
                   f"hydra.launcher.max_members={len(members)}", f"hydra.sweep.dir={folder}"]
        processes.append(Process(name, list(members), folder, command))
    return processes


def job_overrides(job_dir: Path) -> dict[str, Any]:
    """The overrides a multirun job ran with (its `.hydra/overrides.yaml`), parsed; {} without one."""
    import yaml

    file = job_dir / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    try:
        return parse_overrides(yaml.safe_load(file.read_text()) or [])
    except Exception:  # a damaged file: the run is reported without its folder
        return {}


def member_folders(process: Process) -> dict[int, Path | None]:
    """{index of each run in `process.runs`: its run folder, or None when it left none}."""
    if not process.ensemble:
        return {0: process.folder if process.folder.is_dir() else None}
    jobs = {job: job_overrides(job) for job in sorted(process.folder.glob("*")) if job.name.isdigit()}
    found: dict[int, Path | None] = {}
    for index, spec in enumerate(process.runs):
        wanted = parse_overrides(f"{k}={v}" for k, v in packable_values(spec).items())
        found[index] = next((job for job, overrides in jobs.items()
                             if all(overrides.get(k) == v for k, v in wanted.items())), None)
    return found

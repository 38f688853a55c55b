"""The suite's vocabulary: a study (what a source reports and how to check it), its parts (what runs, and at which
size) and each planned run. The studies themselves, and choosing parts by name, are in `reproduce/studies/`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from reproduce.headlines import Headline, Measure

SIZES = ("gpu", "cpu")


@dataclass(frozen=True)
class RunSpec:
    """One run the suite plans: what `launch.py` gets, where it sits in its study's tables, and what it costs.

    `values` name the run in its study (e.g. {"fraction": 0.3}); the seed is apart. `steps` is the run's
    `trainer.max_steps`: the source's length, or a cap that `source_steps` then records."""

    experiment: str
    values: Mapping[str, Any]
    seed: int
    steps: int
    overrides: tuple[str, ...] = ()
    source_steps: int | None = None
    rate: str | None = None        # its entry in reproduce/throughput.py's RATES (default: the experiment)
    ensemble: bool = True          # may share an ensemble with runs that differ only in packable values
    torch_init: bool = False       # starts from PyTorch's default init (init_from a file made before launch); solo

    @property
    def capped(self) -> bool:
        return self.source_steps is not None and self.steps < self.source_steps

    @property
    def rate_key(self) -> str:
        return self.rate or self.experiment

    def launch_overrides(self) -> list[str]:
        """Its overrides for `launch.py`, the seed and init apart (the packing sweeps or adds them)."""
        return [f"experiment={self.experiment}", *self.overrides, f"trainer.max_steps={self.steps}"]

    def describe(self) -> str:
        values = " ".join(f"{key}={value}" for key, value in self.values.items())
        return f"{values} seed={self.seed}".strip()


@dataclass(frozen=True)
class Part:
    """A share of a study that fits the budget on one GPU: its runs at each size (`runs("gpu")`, `runs("cpu")`)."""

    name: str
    covers: str                              # what it measures, one line
    make_runs: Callable[[str], Sequence[RunSpec]]

    def runs(self, size: str) -> list[RunSpec]:
        return list(self.make_runs(size))


@dataclass(frozen=True)
class Study:
    """A source's headline results and the parts that measure them. `measures` are taken from every run folder
    (into results.json); `headlines` compare them with the source; the figure draws `figure_y` over `figure_x`."""

    name: str
    title: str
    source: str
    parts: tuple[Part, ...]
    measures: Mapping[str, "Measure"]
    headlines: tuple["Headline", ...]
    figure_x: str
    figure_y: str
    figure_hue: str | None = None           # a second value drawn as separate series
    notes: tuple[str, ...] = field(default=())


def seeds(size: str, gpu: int, cpu: int) -> range:
    """Seeds 0..n-1: `gpu` of them at the source's size, `cpu` at toy size."""
    return range(gpu if size == "gpu" else cpu)

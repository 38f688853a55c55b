"""What is measured per run, and how a study's headline figures compare with its source.

A measure reads one run folder (its summary.json and metrics.csv) into a value results.json keeps: a number, a
label, `{"more_than": N}` when a threshold was not reached within the N steps the run had, or None when there is
nothing to read (no folder, no such metric). A headline gathers the values of the runs it names over their seeds:
median and spread (min to max), and a verdict:

- "agrees within the seeds' spread": the source's figure lies between the lowest and the highest seed (widened by the
  headline's stated tolerance, for figures the source only gives roughly);
- "differs": it lies outside;
- "not reached in budget": the median seed did not reach the threshold within the steps it had (a cap or the
  deadline), so no figure can be compared;
- "no source figure": the source states none (the table shows what was measured);
- "not run": no run of it has results yet.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from analysis.dynamics import classify_dynamics
from analysis.runs import Run

AGREES, DIFFERS, NOT_REACHED = "agrees within the seeds' spread", "differs", "not reached in budget"
NO_FIGURE, NOT_RUN = "no source figure", "not run"


# -- measures: one value per run ---------------------------------------------------------------------------------
class Measure:
    def of(self, run: Run, steps: int) -> Any:
        """The value for `run`, which trained `steps` steps (its summary's, else its last logged row)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Reach(Measure):
    """The step a `grok/*` threshold was first reached (summary.json `grok`), or {"more_than": steps} if never."""

    key: str

    def of(self, run: Run, steps: int) -> Any:
        step = (run.summary.get("grok") or {}).get(self.key)
        if step is None and self.key in run.metrics:  # a run killed before its summary: its logged row
            step = run.last(self.key)
        return int(step) if step is not None else {"more_than": int(steps)}


@dataclass(frozen=True)
class Final(Measure):
    """summary.json `final[metric]`: the metric on the final weights (else its last logged value)."""

    metric: str

    def of(self, run: Run, steps: int) -> Any:
        value = (run.summary.get("final") or {}).get(self.metric)
        return value if value is not None else run.last(self.metric)


@dataclass(frozen=True)
class Last(Measure):
    """The last logged value of a metric in metrics.csv (e.g. gates/effective_depth)."""

    metric: str

    def of(self, run: Run, steps: int) -> Any:
        return run.last(self.metric)


@dataclass(frozen=True)
class AtStep(Measure):
    """A metric's value at the last step it was logged at or before `step` (to compare runs of other lengths with a
    figure measured at that step); None if the run logged it only later."""

    metric: str
    step: int

    def of(self, run: Run, steps: int) -> Any:
        if self.metric not in run.metrics:
            return None
        rows = run.metrics[run.metrics["step"] <= self.step][["step", self.metric]].dropna()
        return float(rows[self.metric].iloc[-1]) if len(rows) else None


@dataclass(frozen=True)
class SummaryValue(Measure):
    """A value of summary.json by its dotted path (`parameters`, `speed.train_tokens_per_s`); where the summary has
    none (a run too short for a steady figure), the last logged value of `metric`, if given."""

    path: str
    metric: str | None = None

    def of(self, run: Run, steps: int) -> Any:
        value: Any = run.summary
        for key in self.path.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is None and self.metric is not None:
            return run.last(self.metric)
        return value


@dataclass(frozen=True)
class Dynamics(Measure):
    """The training dynamics named from the accuracy curves (analysis/dynamics.py: instant generalisation,
    grokking, oscillation, memorisation, ...)."""

    def of(self, run: Run, steps: int) -> Any:
        curves = []
        for metric in ("train/acc", "val/acc"):
            if metric not in run.metrics:
                return None
            rows = run.metrics[["step", metric]].dropna()
            curves.append(list(zip(rows["step"].astype(int), rows[metric].astype(float))))
        return classify_dynamics(*curves) if curves[1] else None


# -- aggregating values over seeds -------------------------------------------------------------------------------
def bound(value: Any) -> int | None:
    """N of a {"more_than": N} value, else None."""
    return value.get("more_than") if isinstance(value, Mapping) else None


def order_key(value: Any) -> float:
    """Numbers as they are, a threshold not reached after every number (its bound breaks ties)."""
    return math.inf if bound(value) is not None else float(value)


@dataclass(frozen=True)
class Spread:
    """Values over seeds (numbers and not-reached bounds): median, lowest and highest."""

    values: tuple[Any, ...]

    @classmethod
    def of(cls, values: Iterable[Any]) -> "Spread":
        return cls(tuple(sorted((v for v in values if v is not None and not isinstance(v, str)), key=order_key)))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        """None when the median seed did not reach the threshold (or there are no values)."""
        if not self.values:
            return None
        middle = [order_key(v) for v in self.values]
        value = statistics.median(middle)
        return None if math.isinf(value) else value

    @property
    def lo(self) -> float:
        return order_key(self.values[0])

    @property
    def hi(self) -> float:
        return order_key(self.values[-1])

    @property
    def least_bound(self) -> int | None:
        """The smallest 'more than N' among the values (what can be said of the unreached ones)."""
        bounds = [bound(v) for v in self.values if bound(v) is not None]
        return min(bounds) if bounds else None

    def describe(self) -> str:
        if not self.values:
            return "-"
        if self.median is None:
            return f"> {fmt(self.least_bound)}"
        spread = f"{fmt(self.lo)} to {'> ' + fmt(self.least_bound) if math.isinf(self.hi) else fmt(self.hi)}"
        return fmt(self.median) if self.n == 1 else f"{fmt(self.median)} ({spread})"


def fmt(value: Any) -> str:
    """Steps and counts with thousands separators, other numbers to 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if bound(value) is not None:
        return f"> {fmt(bound(value))}"
    value = float(value)
    if math.isinf(value):
        return "inf"
    if value == int(value) and abs(value) >= 100:
        return f"{int(value):,}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


# -- headlines ---------------------------------------------------------------------------------------------------
def matches(record: Mapping[str, Any], select: Mapping[str, Any]) -> bool:
    values = record.get("values", {})
    return all(key in values and values[key] == wanted for key, wanted in select.items())


def measured_of(records: Sequence[Mapping[str, Any]], select: Mapping[str, Any], measure: str) -> dict[int, Any]:
    """{seed: value} of `measure` over the records that match `select`."""
    return {r["seed"]: r.get("measured", {}).get(measure) for r in records if matches(r, select)}


@dataclass(frozen=True)
class Headline:
    """A figure the source reports and its counterpart over the runs that `select` names. `source` is the figure
    (None when the source gives none), `source_text` how the source puts it, `quote` and `where` its words and their
    place. `rel` / `abs` widen the seeds' range for figures the source gives roughly (`~`), as each study says why."""

    claim: str
    measure: str
    select: Mapping[str, Any]
    source: Any
    source_text: str
    quote: str
    where: str
    rel: float = 0.0
    abs: float = 0.0

    def spread(self, records: Sequence[Mapping[str, Any]]) -> Spread | None:
        found = measured_of(records, self.select, self.measure)
        return Spread.of(found.values()) if found else None

    def evaluate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        spread = self.spread(records)
        seeds = sorted(measured_of(records, self.select, self.measure))
        return self.entry(spread, seeds, self.verdict(spread))

    def entry(self, spread: Spread | None, seeds: Sequence[int], verdict: str) -> dict[str, Any]:
        """The headline as results.json keeps it (what `compare` reads)."""
        numbers = spread is not None and spread.n > 0
        return {"claim": self.claim, "source": self.source, "source_text": self.source_text, "quote": self.quote,
                "where": self.where, "measured": spread.describe() if spread else "-",
                "median": spread.median if numbers else None, "lo": spread.lo if numbers else None,
                "hi": spread.hi if numbers and not math.isinf(spread.hi) else None,
                "values": list(spread.values) if spread else [], "seeds": list(seeds), "verdict": verdict,
                "rel": self.rel, "abs": self.abs}

    def verdict(self, spread: Spread | None) -> str:
        if spread is None or spread.n == 0:
            return NOT_RUN
        if spread.median is None:
            return NOT_REACHED
        if self.source is None:
            return NO_FIGURE
        return AGREES if within(self.source, spread.lo, spread.hi, self.rel, self.abs) else DIFFERS


def within(source: float, lo: float, hi: float, rel: float, abs_: float) -> bool:
    return lo * (1 - rel) - abs_ <= source <= hi * (1 + rel) + abs_


@dataclass(frozen=True)
class Ratio(Headline):
    """`measure` over the runs `select` names divided by the same over the runs `over` names: per seed where both
    have the same seeds, else every pair (so the spread covers every combination). A numerator not reached gives a
    ratio 'more than' its bound over the denominator."""

    over: Mapping[str, Any] = None  # type: ignore[assignment]

    def evaluate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        top = measured_of(records, self.select, self.measure)
        bottom = measured_of(records, self.over, self.measure)
        if not top or not bottom:
            return self.entry(None, [], NOT_RUN)
        pairs = ([(top[s], bottom[s]) for s in sorted(top)] if set(top) == set(bottom)
                 else [(a, b) for a in top.values() for b in bottom.values()])
        spread = Spread.of(ratio(a, b) for a, b in pairs)
        seeds = sorted(set(top) | set(bottom))
        if spread.n == 0 and any(bound(b) is not None for _, b in pairs):  # no denominator reached its threshold
            return self.entry(spread, seeds, NOT_REACHED)
        return self.entry(spread, seeds, self.verdict(spread))


def ratio(a: Any, b: Any) -> Any:
    if a is None or b is None or bound(b) is not None or isinstance(a, str) or isinstance(b, str) or b == 0:
        return None  # the denominator not reached: nothing can be said
    if bound(a) is not None:
        return {"more_than": round(bound(a) / b, 2)}
    return a / b


@dataclass(frozen=True)
class Label(Headline):
    """A named outcome (the dynamics of a run): agrees when the source's label is among the seeds' labels."""

    def evaluate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        found = measured_of(records, self.select, self.measure)
        labels = [value for value in found.values() if isinstance(value, str)]
        entry = self.entry(None, sorted(found), NOT_RUN)
        if not labels:
            return entry
        counts = Counter(labels).most_common()
        entry["measured"] = ", ".join(f"{label} ({count} of {len(labels)})" for label, count in counts)
        entry["values"], entry["median"] = labels, counts[0][0]
        entry["verdict"] = NO_FIGURE if self.source is None else (AGREES if self.source in labels else DIFFERS)
        return entry


@dataclass(frozen=True)
class Trend(Headline):
    """How `measure` moves as the value `x` grows, over the runs `select` names: `source` is "falls" or "rises".
    Agrees when the seeds at the largest x all lie beyond the seeds at the smallest x in that direction."""

    x: str = ""

    def evaluate(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        xs = sorted({r["values"][self.x] for r in records if matches(r, self.select) and self.x in r["values"]})
        groups = {x: Spread.of(measured_of(records, {**self.select, self.x: x}, self.measure).values()) for x in xs}
        seeds = sorted({r["seed"] for r in records if matches(r, self.select)})
        entry = self.entry(None, seeds, NOT_RUN)
        if len(xs) < 2 or any(groups[x].n == 0 for x in (xs[0], xs[-1])):
            return entry
        entry["measured"] = " -> ".join(f"{fmt(x)}: {groups[x].describe()}" for x in xs)
        entry["values"] = {str(x): list(groups[x].values) for x in xs}
        first, last = groups[xs[0]], groups[xs[-1]]
        if first.median is None and last.median is None:
            entry["verdict"] = NOT_REACHED
        elif self.source == "falls":
            entry["verdict"] = AGREES if last.hi < first.lo else DIFFERS
        else:
            entry["verdict"] = AGREES if last.lo > first.hi else DIFFERS
        return entry


def evaluate_study(headlines: Sequence[Headline], records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [headline.evaluate(records) for headline in headlines]

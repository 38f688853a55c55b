"""`python -m analysis.routing_by_class RUN [RUN ...] [--out DIR]`: which kinds of text each routed layer sends to softmax.

The hybrid-LM study's routing by byte class: per run and class of text (letters, digits, spaces, newlines,
punctuation, other), how many tokens of the validation windows it holds and the share of them each routed layer sent
to softmax attention, from the run's final weights in eval mode. The token-routing diagnostic (callbacks=lm, which the
hybrid presets use) measures it when training ends, on every evaluation window of the validation split, into
summary.json `routing_by_class`; this reads it. Each argument is a run folder, a multirun folder or a folder of
runs; runs without it (no routed layers, or trained before the diagnostic measured it) are named on stderr and left
out. Writes `routing_by_class.csv` and `.md` into --out (default: the first path's `analysis/`) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.compare import label_of
from analysis.runs import Run
from analysis.sweep import find_jobs
from analysis.table import print_report, write_table
from core.errors import ConfigError, require

KEY = "routing_by_class"  # where summary.json holds it


def class_rows(run: Run) -> list[dict]:
    """One row per class of text: the run, the class, its token count and each routed layer's share to softmax."""
    measured = run.summary[KEY]
    return [{"run": label_of(run), "class": name, "tokens": count}
            | {layer: shares.get(name) for layer, shares in measured["share"].items()}
            for name, count in measured["tokens"].items()]


def routing_by_class(paths: list[Path]) -> tuple[pd.DataFrame, list[Run]]:
    """The table of every run under `paths` that measured its routing by class, and the runs that did not."""
    runs = [job.run for path in paths for job in find_jobs(path) if job.run is not None]
    measured = [isinstance(run.summary.get(KEY), dict) for run in runs]
    require(any(measured), "paths", " ".join(map(str, paths)),
            f"runs whose summary.json has `{KEY}` (hybrid LMs with routed layers, trained with callbacks=lm)")
    table = pd.DataFrame([row for run, has in zip(runs, measured) if has for row in class_rows(run)])
    return table.astype({"tokens": "Int64"}), [run for run, has in zip(runs, measured) if not has]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.routing_by_class", description=__doc__.split("\n\n")[1])
    parser.add_argument("paths", type=Path, nargs="+", help="run, multirun or runs folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first path>/analysis)")
    args = parser.parse_args(argv)
    try:
        table, without = routing_by_class(args.paths)
    except ConfigError as err:
        print(f"[grokking-lab] error: {err}", file=sys.stderr)
        return 1
    for run in without:
        print(f"[grokking-lab] warning: {run.path}: no {KEY} in summary.json: left out", file=sys.stderr)
    out = args.out if args.out is not None else args.paths[0] / "analysis"
    print_report(table, write_table(table, out, KEY))
    return 0


if __name__ == "__main__":
    sys.exit(main())

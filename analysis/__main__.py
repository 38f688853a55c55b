"""`python -m analysis <run or sweep folder> [--out DIR] [--grok-key KEY] [--metric NAME] [--baseline KEY=VALUE]`

Prints the sweep table (Markdown) and the files written: table.csv, table.md and the figures, into
`<folder>/analysis/` unless --out says otherwise. A bad path or key is one line on stderr and exit code 1; a damaged
run file (cut short by a kill, mixed rows) is one warning line on stderr, and the analysis goes on.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from analysis.curves import curves_of
from analysis.plots import DEFAULT_GROK_KEY, write_plots
from analysis.runs import logger
from analysis.sweep import find_jobs
from analysis.table import print_report, sweep_table, write_table
from core.errors import ConfigError, require


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[1])
    parser.add_argument("path", type=Path, help="a run folder, a multirun folder, or a folder holding them")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <path>/analysis)")
    parser.add_argument("--grok-key", default=DEFAULT_GROK_KEY, help=f"grok/* step to plot (default {DEFAULT_GROK_KEY}, or the runs' "
                        "own val threshold of 0.99)")
    parser.add_argument("--metric", default="val/acc", help="metric whose curves are overlaid (default val/acc)")
    parser.add_argument("--baseline", default=None, help="KEY=VALUE: the runs steps to 95 %% are divided by "
                        "(ratio/grok/... columns; default: the first job's experiment when the sweep runs several)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # damaged run files are reported through the `analysis` logger: here, as plain warning lines on stderr
    warning_lines = logging.StreamHandler(sys.stderr)
    warning_lines.setFormatter(logging.Formatter("[grokking-lab] warning: %(message)s"))
    logger.addHandler(warning_lines)
    propagate, logger.propagate = logger.propagate, False
    try:
        return analyse(args)
    finally:
        logger.removeHandler(warning_lines)
        logger.propagate = propagate


def analyse(args: argparse.Namespace) -> int:
    try:
        jobs = find_jobs(args.path)
        table = sweep_table(jobs, args.path, args.baseline)
        grok_keys = [c for c in table.columns if c.startswith("grok/")]
        if args.grok_key == DEFAULT_GROK_KEY and DEFAULT_GROK_KEY not in grok_keys:  # runs judged by another metric
            args.grok_key = next((k for k in grok_keys if k.startswith("grok/val_") and k.endswith("_0.99_step")),
                                 args.grok_key)
        require(not grok_keys or args.grok_key in grok_keys, "--grok-key", args.grok_key, ", ".join(grok_keys))
        out = args.out if args.out is not None else args.path / "analysis"
        written = write_table(table, out)
        written += write_plots(table, curves_of(jobs, args.path), out, args.grok_key, args.metric)
    except ConfigError as err:
        print(f"[grokking-lab] error: {err}", file=sys.stderr)
        return 1
    print_report(table, written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reproduction suite's command line.

    python -m reproduce [--size gpu|cpu] [--part NAME ...] [--budget-s 540] [--out DIR] [--plan]
    python -m reproduce compare A B

Runs each chosen part (a study's name picks all its parts) under its own wall-clock budget (at CPU size the parts
share one budget) and writes
`<out>/report.md`, `<out>/results.json` and `<out>/figures/`; `--plan` prints every process with its runs, model-steps
and (GPU size) estimated wall time, and runs nothing. docs/reproductions.md, 'The reproduction suite', says more.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import ConfigError
from reproduce.suite import SIZES

BUDGET_S = 540.0  # 9 minutes a part


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="gpu", help="gpu: the sources' sizes; cpu: toy size")
    parser.add_argument("--part", nargs="+", metavar="NAME", help="parts or studies to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-clock budget of each part")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: runs/reproduce_<size>)")
    parser.add_argument("--plan", action="store_true", help="print the plan (and GPU estimates); run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        if len(argv) != 3:
            print("usage: python -m reproduce compare A B (two report folders or results.json files)")
            return 2
        from reproduce.compare import main as compare

        return compare(Path(argv[1]), Path(argv[2]))
    args = parse(argv)
    from reproduce.plan import plan_part, print_plan
    from reproduce.runner import run_parts
    from reproduce.studies import select_parts

    out = args.out or Path("runs") / f"reproduce_{args.size}"
    plans = [plan_part(study, part, args.size, out) for study, part in select_parts(args.part)]
    if args.plan:
        print_plan(plans, args.budget_s)
        return 0
    too_long = [p.part.name for p in plans if not p.fits(args.budget_s)]
    if too_long:  # run anyway: the deadline reports what did not finish
        print(f"[reproduce] warning: estimated past the budget: {', '.join(too_long)}", flush=True)
    run_parts(plans, out, args.budget_s)
    print(f"[reproduce] report: {out / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        sys.exit(f"error: {err}")

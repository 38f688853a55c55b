"""`python -m analysis.compare RUN [RUN ...] [--out DIR]`: language-model runs side by side.

The hybrid-LM study's comparison (static layers against per-token routing, dense against compute-saving routing):
one row per run with its tokenizer, its final validation loss and perplexity (per token), bits per byte (the
summed loss over the bytes of text the targets stand for: one scale across tokenizers) and next-token accuracy, its
training and evaluation speed in tokens/s, its parameter count, and per routed layer the share of tokens it sent to
softmax attention, the routing entropy (nats; ln 2 is undecided) and the Switch balance E·Σ f·P (1 balanced, 2 all
tokens to one mechanism), each as the routing diagnostic last measured it in eval mode on its validation probe (share
and entropy, where a run has no such measurement: its last training batch's). A multirun folder (`sweep=hybrid_comparison`)
compares its jobs. Each
argument is a run folder, a multirun folder or a folder of runs. Writes `comparison.csv`, `comparison.md` and
`comparison.png` (validation loss over steps and over wall-clock time) into --out (default: the first path's
`analysis/`), and prints the Markdown table. A bad path is one line on stderr and exit code 1.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import new_figure, save
from analysis.runs import Run
from analysis.sweep import find_jobs
from analysis.table import print_report, to_markdown
from core.errors import ConfigError

FINAL = ("val/loss", "val/perplexity", "val/bits_per_byte", "val/acc")
# per routed layer: the column it fills, and the logged metrics it reads, the eval-mode probe's first
ROUTING = {"softmax_share": (r"routing/eval_share/(layer_\d+)/softmax", r"routing/share/(layer_\d+)/softmax"),
           "routing_entropy": (r"routing/eval_entropy/(layer_\d+)", r"routing/entropy/(layer_\d+)"),
           "balance": (r"routing/eval_balance/(layer_\d+)",)}
# what tells the runs apart when their labels are built from the config
LABEL_KEYS = ("model.layers", "model.routing_mode", "model.router", "optimizer.lr", "seed")


def routing_columns(run: Run) -> dict[str, float]:
    """Per routed layer its share of tokens to softmax, routing entropy and balance (ROUTING): the last value the
    eval-mode probe logged, else the last training batch's."""
    columns: dict[str, float] = {}
    for name, sources in ROUTING.items():
        found: dict[str, tuple[int, float]] = {}
        for rank, pattern in enumerate(sources):
            for column in run.metrics.columns:
                if (match := re.fullmatch(pattern, str(column))) and (value := run.last(column)) is not None:
                    layer = match.group(1)
                    if layer not in found or rank < found[layer][0]:
                        found[layer] = (rank, value)
        columns |= {f"{name}/{layer}": value for layer, (_, value) in sorted(found.items())}
    return columns


def label_of(run: Run) -> str:
    """The experiment's name and the settings of LABEL_KEYS the run overrode."""
    parts = [str(run.summary.get("experiment") or run.path.name)]
    parts += [f"{key.split('.')[-1]}={run.overrides[key]}" for key in LABEL_KEYS if key in run.overrides]
    return " ".join(parts)


def row_of(run: Run) -> dict:
    final, speed = run.summary.get("final", {}), run.summary.get("speed", {})
    corpus = run.summary.get("corpus") or {}
    row = {"run": label_of(run), "status": run.status, "steps": run.summary.get("steps"),
           "parameters": run.summary.get("parameters"), "tokenizer": corpus.get("tokenizer")}
    row |= {name: final.get(name) for name in FINAL}
    row |= {"train_tokens_per_s": speed.get("train_tokens_per_s"), "val_tokens_per_s": speed.get("val_tokens_per_s")}
    row |= routing_columns(run)
    row["wall_time_s"] = run.summary.get("wall_time_s")
    row["folder"] = str(run.path)
    return row


def comparison(paths: list[Path]) -> tuple[pd.DataFrame, list[Run]]:
    runs = [job.run for path in paths for job in find_jobs(path) if job.run is not None]
    table = pd.DataFrame([row_of(run) for run in runs])
    routing = [c for name in ROUTING for c in sorted(c for c in table.columns if c.startswith(f"{name}/"))]
    rest = [c for c in table.columns if c not in routing and c not in ("wall_time_s", "folder")]
    return table[[*rest, *routing, "wall_time_s", "folder"]], runs


def loss_curves_figure(runs: list[Run], table: pd.DataFrame) -> Figure:
    """Validation loss of each run over steps and over wall-clock seconds, labelled by the table's `run`."""
    fig = new_figure(11, 4)
    by_step, by_time = fig.subplots(1, 2)
    for run, label in zip(runs, table["run"]):
        if "val/loss" not in run.metrics:
            continue
        points = run.metrics[["step", "val/loss"]].dropna()
        by_step.plot(points["step"], points["val/loss"], marker=".", label=label)
        steps, wall = run.summary.get("steps"), run.summary.get("wall_time_s")
        if steps and wall:  # runs log no clock: spread the run's wall time evenly over its steps
            by_time.plot(points["step"] * wall / steps, points["val/loss"], marker=".", label=label)
    by_step.set(xlabel="step", ylabel="validation loss (nats/token)", title="per step")
    by_time.set(xlabel="wall-clock seconds (steps x wall time / steps)", ylabel="validation loss",
                title="per second of training")
    by_step.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n\n")[1])
    parser.add_argument("paths", type=Path, nargs="+", help="run, multirun or runs folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first path>/analysis)")
    args = parser.parse_args(argv)
    try:
        table, runs = comparison(args.paths)
    except ConfigError as err:
        print(f"[grokking-lab] error: {err}", file=sys.stderr)
        return 1
    out = args.out if args.out is not None else args.paths[0] / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    shown = table.drop(columns=["folder"])
    (out / "comparison.md").write_text(to_markdown(shown))
    figure = save(loss_curves_figure(runs, table), out / "comparison.png")
    written = [out / "comparison.csv", out / "comparison.md", figure]
    print_report(shown, written)
    return 0


if __name__ == "__main__":
    sys.exit(main())

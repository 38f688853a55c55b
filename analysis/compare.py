"""`python -m analysis.compare RUN [RUN ...] [--out DIR]`: language-model runs side by side.

The hybrid-LM study's comparison (static layers against per-token routing, dense against compute-saving routing):
one row per run with its tokenizer, its final validation loss and perplexity (per token), bits per byte (the
summed loss over the bytes of text the targets stand for: one scale across tokenizers) and next-token accuracy, its
training and evaluation speed in tokens/s, its parameter count, and for routed layers the share of tokens each sent
to softmax attention (eval mode, on the routing diagnostic's validation probe; else the last training batch's share). Each
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
SHARE = re.compile(r"routing/(eval_share|share)/(layer_\d+)/softmax$")
# what tells the runs apart when their labels are built from the config
LABEL_KEYS = ("model.layers", "model.routing_mode", "model.router", "optimizer.lr", "seed")


def softmax_shares(run: Run) -> dict[str, float]:
    """Share of tokens each routed layer sent to softmax: the eval-mode probe's when logged, else training's."""
    found: dict[str, tuple[int, float]] = {}
    for column in run.metrics.columns:
        if (match := SHARE.match(str(column))) and (value := run.last(column)) is not None:
            rank = 0 if match.group(1) == "eval_share" else 1
            layer = match.group(2)
            if layer not in found or rank < found[layer][0]:
                found[layer] = (rank, value)
    return {f"softmax_share/{layer}": value for layer, (_, value) in sorted(found.items())}


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
    row |= softmax_shares(run)
    row["wall_time_s"] = run.summary.get("wall_time_s")
    row["folder"] = str(run.path)
    return row


def comparison(paths: list[Path]) -> tuple[pd.DataFrame, list[Run]]:
    runs = [job.run for path in paths for job in find_jobs(path) if job.run is not None]
    table = pd.DataFrame([row_of(run) for run in runs])
    shares = sorted(c for c in table.columns if c.startswith("softmax_share/"))
    rest = [c for c in table.columns if c not in shares and c not in ("wall_time_s", "folder")]
    return table[[*rest, *shares, "wall_time_s", "folder"]], runs


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

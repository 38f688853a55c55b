"""The grokking curve every run leaves in plots/ (analysis/grokking_curve.py, drawn by the life cycle's end): the
plotted lines are the logged train / val accuracy and loss over log steps, and the grokking steps are marked."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.grokking_curve import FILE, grokking_curve_figure
from analysis.runs import read_metrics
from tests.conftest import metrics_rows, run_quietly


def plotted(fig):
    """{panel: {label: (x, y)}} of the figure's solid lines, and per panel the x of its vertical (dotted) lines."""
    lines, marks = {}, {}
    for ax in fig.axes:
        panel = ax.get_ylabel()
        for line in ax.get_lines():
            x, y = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
            if line.get_linestyle() == ":":
                marks.setdefault(panel, []).append(x[0])
            elif line.get_linestyle() == "-":
                lines.setdefault(panel, {})[line.get_label()] = (x, y)
    return lines, marks


def test_the_figure_plots_the_logged_curves_and_marks_the_reached_steps():
    # steps done; train logged every step, val every other, a NaN and a gap left out
    metrics = pd.DataFrame({"step": [1, 2, 3, 4, 5, 6],
                            "train/acc": [0.1, 0.5, 0.9, 1.0, 1.0, 1.0],
                            "train/loss": [2.0, 1.0, 0.5, 0.1, 0.05, 0.01],
                            "val/acc": [np.nan, 0.05, np.nan, 0.5, np.nan, 0.99],
                            "val/loss": [np.nan, 3.0, np.nan, float("nan"), np.nan, 0.02]})
    grok = {"grok/train_acc_0.99_step": 4, "grok/val_acc_0.5_step": 4, "grok/val_acc_0.99_step": 6,
            "grok/val_acc_0.9_step": None}  # not reached: no mark
    fig = grokking_curve_figure(metrics, grok, {"generalising": 0.3, "zero": 0.0})
    lines, marks = plotted(fig)
    assert set(lines) == {"accuracy", "loss"} and set(lines["accuracy"]) == {"train", "val"}
    np.testing.assert_array_equal(lines["accuracy"]["train"][0], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(lines["accuracy"]["val"][0], [2, 4, 6])
    np.testing.assert_array_equal(lines["accuracy"]["val"][1], [0.05, 0.5, 0.99])
    np.testing.assert_array_equal(lines["loss"]["val"][0], [2, 6])  # the NaN is not drawn
    np.testing.assert_array_equal(lines["loss"]["val"][1], [3.0, 0.02])
    assert sorted(marks["accuracy"]) == sorted(marks["loss"]) == [4, 4, 6]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    assert fig.axes[1].get_yscale() == "log"
    # the positive bound is a horizontal reference line on the loss panel; the zero one has no place on a log axis
    assert [line.get_ydata()[0] for line in fig.axes[1].get_lines() if line.get_linestyle() == "--"] == [0.3]


def test_a_run_that_logged_no_curve_gets_no_figure():
    assert grokking_curve_figure(pd.DataFrame({"step": [1, 2], "speed/x": [1.0, 2.0]})) is None


def test_a_default_run_leaves_its_grokking_curve(tmp_path):
    """The default experiment (`make run`), shortened: plots/grokking_curve.png is there, and the figure drawn from
    the run's files plots metrics.csv's values, read here with the csv module, at steps done (row step + 1)."""
    overrides = ["trainer.max_steps=60", "trainer.val_check_interval=20", "trainer.log_every_n_steps=10",
                 "callbacks.grokking_time.val_thresholds=[0.001]",  # any net beats 1 in 1,000 (chance: 1/p): a mark
                 "callbacks.progress.refresh_seconds=1000", "threads=1"]
    summary, _ = run_quietly(overrides, tmp_path)
    assert (tmp_path / "plots" / FILE).stat().st_size > 10_000
    assert summary["grok"]["grok/val_acc_0.001_step"] == 20
    lines, marks = plotted(grokking_curve_figure(read_metrics(tmp_path), summary["grok"]))
    rows = metrics_rows(tmp_path)
    for panel, what in (("accuracy", "acc"), ("loss", "loss")):
        for split in ("train", "val"):
            logged = [(int(r["step"]) + 1, float(r[f"{split}/{what}"])) for r in rows if r[f"{split}/{what}"]]
            x, y = lines[panel][split]
            assert len(logged) >= (3 if split == "val" else 6)
            np.testing.assert_array_equal(x, [s for s, _ in logged])
            np.testing.assert_allclose(y, [v for _, v in logged], rtol=1e-12)
    reached = sorted(step for step in summary["grok"].values() if step is not None)
    assert sorted(marks["accuracy"]) == pytest.approx(reached) and 20 in reached

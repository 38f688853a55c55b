"""The analysis package on a real joblib sweep (two jobs fail at config time) and on hand-made folders."""
import csv
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import load_curves, load_run, load_sweep, pareto_front, seed_bands, to_markdown
from analysis.plots import curves_figure, grok_step_figure, phase_diagram
from analysis.runs import parse_overrides, read_metrics
from analysis.table import DEPTH
from core.errors import ConfigError
from tests.conftest import ROOT, launch_cli, read_json

# 2-layer gated MLP on p=23: weight decay 5 groks within 200 steps, 1 does not, -1 is refused when the run starts.
# Steps to val acc 0.99 over seeds 0-9 (validation every 10), the same under AVX-512 and default kernels: weight
# decay 5 at 80-200 and one seed not within 600 (seeds 0, 1 here: 100, 130), weight decay 1 at 250-450 (280, 360):
# 200 steps leave both sides of each run here a margin of 70 steps or more.
SWEEP = ["-m", "model=gated_mlp", "model.n_layers=2", "regularizer=compute_sum", "data.p=23",
         "data.train_fraction=0.9", "optimizer.lr=1e-2", "optimizer.weight_decay=1.0,5.0,-1.0", "seed=0,1",
         "trainer.max_steps=200", "trainer.val_check_interval=10", "trainer.log_every_n_steps=10", "threads=1",
         "callbacks.progress.refresh_seconds=1000", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
DECAYS = [1.0, 1.0, 5.0, 5.0, -1.0, -1.0]  # job order: weight decay outer, seed inner
GROK_STEPS = ["grok/train_acc_0.99_step", "grok/val_acc_0.5_step", "grok/val_acc_0.9_step",
              "grok/val_acc_0.95_step", "grok/val_acc_0.99_step"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep folder, after Hydra's joblib launcher ran every job; returns (folder, launcher result)."""
    base = tmp_path_factory.mktemp("analysis")
    result = launch_cli([*SWEEP, f"hydra.sweep.dir={base / 'sweep'}"], cwd=base)
    return base / "sweep", result


def analysis_cli(args):
    """`python -m analysis ARGS` from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_hydra_runs_every_job_and_reports_the_failure_at_the_end(sweep):
    folder, result = sweep
    # observed: a job failing at config time does not stop the others; Hydra raises JobFailed once all are done
    assert result.returncode != 0 and "JobFailed" in result.stderr
    assert "optimizer.weight_decay=-1.0 is not allowed" in result.stderr
    statuses = [read_json(folder / str(job) / "summary.json")["status"] for job in range(6)]
    assert statuses == ["completed"] * 4 + ["failed"] * 2


@pytest.mark.rounding
def test_table_rows_equal_each_runs_summary(sweep):
    folder, _ = sweep
    table = load_sweep(folder)
    assert table.attrs["swept"] == ["optimizer.weight_decay"]
    assert list(table["run"]) == [str(i) for i in range(6)] and list(table["job"]) == list(range(6))
    assert list(table["optimizer.weight_decay"]) == DECAYS and list(table["seed"]) == [0, 1] * 3
    for job in range(4):
        row, summary = table.iloc[job], read_json(folder / str(job) / "summary.json")
        assert row["status"] == summary["status"] and row["steps"] == summary["steps"] == 200
        for name in ("train/acc", "val/acc"):
            assert row[name] == summary["final"][name]
        for name in GROK_STEPS:
            assert (pd.isna(row[name]) and summary["grok"][name] is None) or row[name] == summary["grok"][name]
        assert row["grokked"] == summary["grokked"] and row["wall_time_s"] == summary["wall_time_s"]
        depths = [float(r["gates/effective_depth"]) for r in csv_rows(folder / str(job) / "metrics.csv")
                  if r["gates/effective_depth"]]
        assert row["gates/effective_depth"] == depths[-1] and 0 < depths[-1] <= 2
    assert list(table["grokked"][:4]) == [False, False, True, True]  # weight decay 5 groks, 1 does not
    assert table["error"].notna().tolist() == [False] * 4 + [True] * 2
    assert table["val/acc"][4:].isna().all() and table["steps"][4:].isna().all()


def test_failed_killed_and_missing_jobs_all_keep_a_row(sweep, tmp_path):
    folder, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.ckpt", "analysis"))
    (copy / "1" / "summary.json").unlink()       # killed hard: no summary
    shutil.rmtree(copy / "2")                    # its folder never made
    shutil.rmtree(copy / "3")
    (copy / "3").mkdir()                         # made but empty
    table = load_sweep(copy)
    assert list(table["status"]) == ["completed", "missing summary", "missing", "missing", "failed", "failed"]
    # the swept values of jobs with nothing on disk come from Hydra's plan in multirun.yaml
    assert list(table["optimizer.weight_decay"]) == DECAYS and list(table["seed"]) == [0, 1] * 3
    killed = table.iloc[1]
    assert pd.isna(killed["steps"]) and killed["gates/effective_depth"] > 0  # still read from its metrics
    assert list(load_curves(copy)["run"].unique()) == ["0", "1"]


@pytest.mark.rounding
def test_metrics_merge_lightning_rows_into_one_row_per_optimiser_step(sweep):
    folder, _ = sweep
    run = load_run(folder / "2")
    summary = read_json(folder / "2" / "summary.json")
    steps = run.metrics["step"]
    assert steps.is_unique and steps.is_monotonic_increasing and list(steps) == list(range(10, 201, 10))
    assert run.metrics[["train/acc", "val/acc"]].notna().all().all()  # train and val rows merged
    raw = csv_rows(folder / "2" / "metrics.csv")
    assert len(raw) > len(steps) and {int(r["step"]) + 1 for r in raw} == set(steps)  # train, val, grok rows
    val_at = {int(r["step"]) + 1: float(r["val/acc"]) for r in raw if r["val/acc"]}
    assert run.metrics.set_index("step")["val/acc"].to_dict() == val_at
    first = steps[run.metrics["val/acc"] >= 0.99].min()
    assert first == summary["grok"]["grok/val_acc_0.99_step"]  # both count optimiser steps
    assert run.overrides["optimizer.weight_decay"] == 5.0 and run.overrides["model"] == "gated_mlp"
    assert run.config["data"]["p"] == 23 and run.config["paths"]["output_dir"] == str(folder / "2")
    assert run.config["name"] == "mlp_grok" and run.status == "completed"


def test_curves_and_seed_bands(sweep):
    folder, _ = sweep
    curves, table = load_curves(folder), load_sweep(folder)
    assert list(curves.columns) == ["run", "step", "metric", "value"]
    assert set(curves["run"]) == {"0", "1", "2", "3"} and curves["value"].notna().all()
    val = curves[curves["metric"] == "val/acc"].pivot(index="step", columns="run", values="value")
    bands = seed_bands(curves, table).set_index(["condition", "step"])
    expected = val[["2", "3"]]
    grokking = bands.loc["optimizer.weight_decay=5.0"]
    np.testing.assert_allclose(grokking["mean"], expected.mean(axis=1))
    np.testing.assert_allclose(grokking["min"], expected.min(axis=1))
    np.testing.assert_allclose(grokking["max"], expected.max(axis=1))
    assert (grokking["n"] == 2).all() and set(bands.index.get_level_values(0)) == {
        "optimizer.weight_decay=1.0", "optimizer.weight_decay=5.0"}


def test_the_phase_diagram_and_the_curves_draw_the_sweep(sweep):
    folder, _ = sweep
    table, curves = load_sweep(folder), load_curves(folder)
    done = table[table["status"] == "completed"]
    assert len(done) == 4
    # the phase diagram: one point per completed run at (effective depth, val acc), a colour per weight decay
    axes = phase_diagram(table).axes[0]
    drawn = {c.get_label(): sorted(map(tuple, c.get_offsets().tolist())) for c in axes.collections
             if not c.get_label().startswith("_")}
    by_decay = {f"optimizer.weight_decay={decay}": sorted(zip(rows[DEPTH].astype(float), rows["val/acc"].astype(float)))
                for decay, rows in done.groupby("optimizer.weight_decay")}
    assert drawn == by_decay
    # the frontier: the points no other point beats (depth <= and accuracy >=, one strictly), by depth
    points = [point for group in by_decay.values() for point in group]
    front = sorted(p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points))
    (line,) = [line for line in axes.get_lines() if line.get_label() == "Pareto frontier"]
    assert list(zip(line.get_xdata(), line.get_ydata())) == front
    # the curves: per weight decay, the mean over its two seeds of each logged val/acc
    val = curves[curves["metric"] == "val/acc"].pivot(index="step", columns="run", values="value")
    lines = {line.get_label(): line for line in curves_figure(curves, table).axes[0].get_lines()}
    for decay, runs in ((1.0, ["0", "1"]), (5.0, ["2", "3"])):
        line = lines[f"optimizer.weight_decay={decay} (n=2)"]
        assert list(line.get_xdata()) == list(val.index)
        np.testing.assert_allclose(line.get_ydata(), val[runs].mean(axis=1), rtol=1e-12)


def test_cli_prints_the_table_and_writes_table_and_plots(sweep, tmp_path):
    folder, _ = sweep
    out = tmp_path / "out"
    result = analysis_cli([folder, "--out", out, "--grok-key", "grok/val_acc_0.5_step"])
    assert result.returncode == 0, result.stderr
    names = ["table.csv", "table.md", "grok_step_vs_optimizer.weight_decay.png", "phase_diagram.png",
             "curves_val_acc.png"]
    for name in names:
        assert str(out / name) in result.stdout
    for name in names[2:]:
        assert (out / name).stat().st_size > 10_000, name  # a drawn figure, not an empty canvas
    markdown = (out / "table.md").read_text()
    assert markdown in result.stdout
    lines = markdown.strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    body = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]
    written = pd.read_csv(out / "table.csv")
    assert header == list(written.columns) == list(load_sweep(folder).columns)
    assert len(body) == len(written) == 6 and all(len(row) == len(header) for row in body)
    assert [row[header.index("status")] for row in body] == ["completed"] * 4 + ["failed"] * 2


def test_cli_default_output_folder_is_inside_the_sweep(sweep, tmp_path):
    folder, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.ckpt", "analysis"))
    assert analysis_cli([copy]).returncode == 0
    assert (copy / "analysis" / "table.csv").is_file()
    assert len(load_sweep(copy)) == 6  # the analysis folder is not taken for a run


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere"], "expected an existing run, multirun or runs folder"),
    (["{tmp}"], "expected a folder holding runs"),
])
def test_cli_bad_path_is_one_line_and_a_failing_exit_code(tmp_path, args, message):
    result = analysis_cli([a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr and "Traceback" not in result.stderr


def test_cli_unknown_grok_key_is_refused_by_name(sweep, tmp_path):
    folder, _ = sweep
    result = analysis_cli([folder, "--out", tmp_path, "--grok-key", "grok/nope"])
    assert result.returncode == 1 and "--grok-key='grok/nope' is not allowed" in result.stderr
    assert "grok/val_acc_0.99_step" in result.stderr


def test_planned_jobs_come_from_sweeper_params_and_task_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(
        "hydra:\n"
        "  sweeper:\n"
        "    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params:\n"
        "      optimizer.lr: 1e-3,1e-2\n"
        "  overrides:\n"
        "    task: ['data.p=11', 'seed=0,1,2']\n"
    )
    table = load_sweep(sweep)
    assert list(table["status"]) == ["missing"] * 6 and list(table["job"]) == list(range(6))
    assert list(table["optimizer.lr"]) == [1e-3] * 3 + [1e-2] * 3 and list(table["seed"]) == [0, 1, 2] * 2
    assert "data.p" not in table  # the same in every job: not a swept value


def test_load_run_and_load_sweep_refuse_folders_without_runs(tmp_path):
    with pytest.raises(ConfigError, match="path="):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="expected a folder holding runs"):
        load_sweep(tmp_path)


def test_metrics_in_version_folders_are_merged_later_version_winning(tmp_path):
    for version, rows in ((0, "0,9,0.5,\n0,9,,0.1\n0,19,0.6,\n"), (1, "0,19,0.7,\n0,19,,0.3\n0,29,0.8,\n")):
        folder = tmp_path / "lightning_logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("epoch,step,train/acc,val/acc\n" + rows)
    metrics = read_metrics(tmp_path)
    assert list(metrics.columns) == ["step", "train/acc", "val/acc"]
    assert metrics["step"].tolist() == [10, 20, 30]
    assert metrics["train/acc"].tolist() == [0.5, 0.7, 0.8]
    assert metrics["val/acc"].tolist()[:2] == [0.1, 0.3] and math.isnan(metrics["val/acc"].iloc[2])


def test_parse_overrides_types_values_like_hydra():
    parsed = parse_overrides(["optimizer.weight_decay=1e-3", "seed=2", "+regularizer.x.weight=0.5",
                              "data.operations=[add,mul]", "model=gated_mlp", "~tags", "trainer.deterministic=true"])
    assert parsed == {"optimizer.weight_decay": 0.001, "seed": 2, "regularizer.x.weight": 0.5,
                      "data.operations": "[add,mul]", "model": "gated_mlp", "tags": None,
                      "trainer.deterministic": True}


def test_pareto_front_keeps_only_undominated_points():
    depth = [1.0, 2.0, 2.0, 3.0, 4.0, 1.5]
    acc = [0.2, 0.9, 0.5, 0.9, 1.0, 0.1]
    # (2, .5) is beaten by (2, .9); (3, .9) by (2, .9); (1.5, .1) by (1, .2)
    assert pareto_front(depth, acc).tolist() == [True, True, False, False, True, False]


def test_markdown_table_cells():
    table = pd.DataFrame({"run": ["a|b", "c"], "acc": [1.0, float("nan")], "step": pd.array([3, None], "Int64")})
    assert to_markdown(table) == "| run | acc | step |\n|---|---|---|\n| a\\|b | 1.0 | 3 |\n| c |  |  |\n"


def test_grok_step_figure_puts_not_grokked_runs_above_the_budget_on_a_log_axis():
    table = pd.DataFrame({
        "optimizer.lr": [1e-4, 1e-3, 1e-2, 1e-2, 1e-3],
        "model.hidden_dim": [64, 64, 64, 128, 128],
        "steps": pd.array([1000, 1000, 800, 1000, None], "Int64"),  # the last run failed: no result
        "grok/val_acc_0.99_step": pd.array([None, 900, 300, None, None], "Int64"),
    })
    table.attrs["swept"] = ["optimizer.lr", "model.hidden_dim"]
    axes = grok_step_figure(table, "optimizer.lr").axes[0]
    assert axes.get_xscale() == "log" and axes.get_yscale() == "linear"  # lr spans 2 decades, steps do not
    points = {(x, y) for c in axes.collections for x, y in c.get_offsets().tolist()}
    top = 1000 * 1.05
    assert points == {(1e-4, top), (1e-3, 900), (1e-2, 300), (1e-2, top)}
    assert "1 runs without a result" in axes.get_title()
    assert {t.get_text() for t in axes.get_legend().get_texts()} == {
        "model.hidden_dim=64", "model.hidden_dim=64: not grokked", "model.hidden_dim=128: not grokked",
        "budget (1000 steps)"}


@pytest.mark.rounding
def test_table_names_each_runs_dynamics_and_pairs_share_an_init(sweep):
    from analysis import load_run
    from analysis.dynamics import LABELS
    from analysis.table import curve, dynamics

    folder, _ = sweep
    table = load_sweep(folder)
    for job in range(4):
        run = load_run(folder / str(job))
        assert table["dynamics"][job] == dynamics(run) in LABELS
        # generalised labels exactly when val acc reached 0.95 (wd 5 does within its 200 steps, wd 1 does not)
        generalised = table["dynamics"][job] in ("grokking", "instant generalisation", "oscillation")
        assert generalised == pd.notna(table["grok/val_acc_0.95_step"][job])
        assert len(curve(run, "val/acc")) >= 5
    assert table["dynamics"][4:].isna().all()  # failed jobs have no curves to name
    # same seed -> same initial weights, whatever the weight decay
    fingerprints = table["init_fingerprint"][:4].tolist()
    assert fingerprints[0] == fingerprints[2] and fingerprints[1] == fingerprints[3] != fingerprints[0]

"""`python -m analysis --group-by`: a sweep's runs grouped by a table column, a config group's option (`ffn_type`) or a
config key, with per group and metric the run count, how many have a value, mean, std, min and max, checked against
the numbers written into hand-made run folders."""
from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest

from analysis.groups import grouped_table
from analysis.sweep import find_jobs
from analysis.table import sweep_table
from core.errors import ConfigError
from tests.analysis.test_analysis import analysis_cli

# job: (ffn option, d_model, final val acc, steps to val acc 0.99 (None: not reached), last logged train/loss)
RUNS = {0: ("mlp", 64, 1.0, 300, 0.01), 1: ("mlp", 64, 0.9, None, 0.20), 2: ("mlp", 64, 1.0, 500, 0.02),
        3: ("moe", 64, 0.5, None, 0.70), 4: ("moe", 64, 1.0, 900, 0.03)}
GROK = "grok/val_acc_0.99_step"


def write_run(folder, job, ffn, d_model, val_acc, grok_step, train_loss):
    """A run folder as a launch leaves it, as far as an analysis reads it."""
    (folder / ".hydra").mkdir(parents=True)
    experiment = "nanda_grok" if ffn == "mlp" else "nanda_moe"
    (folder / ".hydra" / "overrides.yaml").write_text(f"- experiment={experiment}\n- seed={job}\n")
    (folder / ".hydra" / "config.yaml").write_text(f"seed: {job}\nmodel:\n  d_model: {d_model}\n")
    (folder / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  job:\n    num: {job}\n  runtime:\n    choices:\n      model/ffn: {ffn}\n      data: modular\n")
    summary = {"status": "completed", "experiment": experiment, "seed": job, "steps": 1000,
               "final": {"train/acc": 1.0, "val/acc": val_acc}, "grok": {GROK: grok_step}, "grokked": grok_step is not None}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.csv").write_text(f"step,train/loss\n99,0.9\n999,{train_loss}\n")


@pytest.fixture
def sweep(tmp_path):
    """Five runs of a multirun over experiment (nanda_grok: dense FFN, nanda_moe: MoE) and seed, and a sixth job Hydra
    planned that never left a folder."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params:\n      experiment: nanda_grok,nanda_moe\n      seed: 0,1,2\n  overrides:\n    task: []\n")
    order = [0, 1, 2, 3, 4]  # jobs 0-2 dense, 3-4 MoE (job 5, MoE seed 2, is missing)
    for job in order:
        write_run(folder / str(job), job, *RUNS[job])
    return folder


def grouped(folder, key, metrics):
    jobs = find_jobs(folder)
    return grouped_table(sweep_table(jobs, folder), jobs, key, metrics)


def expected(values):
    known = [v for v in values if v is not None]
    return {"runs": len(values), "n": len(known), "mean": statistics.mean(known) if known else None,
            "std": statistics.stdev(known) if len(known) > 1 else None, "min": min(known, default=None),
            "max": max(known, default=None)}


def rows_of(table, key):
    return {(row[key], row["metric"]): {k: (None if pd.isna(row[k]) else row[k])
                                        for k in ("runs", "n", "mean", "std", "min", "max")}
            for _, row in table.iterrows()}


def test_grouped_by_the_ffn_a_run_chose(sweep):
    table = grouped(sweep, "ffn_type", ["val/acc", GROK, "train/loss"])
    assert list(table.columns) == ["ffn_type", "metric", "runs", "n", "mean", "std", "min", "max"]
    assert list(table["metric"]) == ["val/acc"] * 3 + [GROK] * 3 + ["train/loss"] * 3  # metric by metric
    by_ffn = {ffn: [job for job, run in RUNS.items() if run[0] == ffn] for ffn in ("mlp", "moe")}
    got = rows_of(table, "ffn_type")
    for ffn, jobs in by_ffn.items():
        assert got[(ffn, "val/acc")] == pytest.approx(expected([RUNS[j][2] for j in jobs]))
        # steps to 0.99: over the runs that reached it, n says how many did
        assert got[(ffn, GROK)] == pytest.approx(expected([RUNS[j][3] for j in jobs]))
        # a metric that is not a column: the last value each run logged
        assert got[(ffn, "train/loss")] == pytest.approx(expected([RUNS[j][4] for j in jobs]))
    assert got[("moe", GROK)]["n"] == 1 and got[("moe", GROK)]["std"] is None  # one value: no spread
    # the planned job without a folder has no choice recorded: a group of its own, with no values
    assert got[("(unset)", "val/acc")] == {"runs": 1, "n": 0, "mean": None, "std": None, "min": None, "max": None}


def test_grouped_by_a_column_and_by_a_config_key(sweep):
    by_experiment = rows_of(grouped(sweep, "experiment", ["val/acc"]), "experiment")
    # a column of the table: the planned job's experiment is known from Hydra's plan
    assert by_experiment[("nanda_moe", "val/acc")] == pytest.approx(expected([0.5, 1.0, None]))
    assert by_experiment[("nanda_grok", "val/acc")] == pytest.approx(expected([1.0, 0.9, 1.0]))
    by_width = rows_of(grouped(sweep, "model.d_model", ["val/acc"]), "model.d_model")
    assert by_width[("64", "val/acc")] == pytest.approx(expected([1.0, 0.9, 1.0, 0.5, 1.0]))


@pytest.mark.parametrize("key, metric, message", [
    ("model.nope", "val/acc", "--group-by='model.nope' is not allowed"),
    ("ffn_type", "val/nope", "--stat='val/nope' is not allowed"),
])
def test_an_unknown_key_or_metric_is_refused_by_name(sweep, key, metric, message):
    with pytest.raises(ConfigError, match=message):
        grouped(sweep, key, [metric])


def test_cli_prints_and_writes_the_grouped_table(sweep, tmp_path):
    out = tmp_path / "out"
    result = analysis_cli([sweep, "--out", out, "--group-by", "ffn_type"])
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(out / "grouped_by_ffn_type.csv")
    # by default: the final numbers and the grokking step the figures use
    assert list(dict.fromkeys(written["metric"])) == ["train/acc", "val/acc", GROK]
    markdown = (out / "grouped_by_ffn_type.md").read_text()
    assert f"by ffn_type:\n{markdown}" in result.stdout and str(out / "grouped_by_ffn_type.csv") in result.stdout
    mlp = written[(written["ffn_type"] == "mlp") & (written["metric"] == GROK)].iloc[0]
    assert (mlp["runs"], mlp["n"], mlp["mean"], mlp["min"], mlp["max"]) == (3, 2, 400.0, 300.0, 500.0)
    assert "| mlp | grok/val_acc_0.99_step | 3 | 2 | 400.0 | 141.4 | 300.0 | 500.0 |" in markdown
    again = analysis_cli([sweep, "--out", out, "--group-by", "ffn_type", "--stat", "train/loss", "--stat", "val/acc"])
    assert list(dict.fromkeys(pd.read_csv(out / "grouped_by_ffn_type.csv")["metric"])) == ["train/loss", "val/acc"]
    assert again.returncode == 0
    refused = analysis_cli([sweep, "--out", out, "--stat", "val/acc"])
    assert refused.returncode == 1 and "--stat=['val/acc'] is not allowed: expected given with --group-by" in \
        refused.stderr

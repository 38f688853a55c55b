"""The MoE-expressivity study end to end on CPU: every FFN type's experiment learns 2-digit +7 to 100 % exact match
on the held-out numbers (final numbers from the best checkpoint), states its parameter matching at start, analyses
its final weights into summary.json; and a sweep's analysis has one row per run and a comparison figure.

Under the study's own stopping rule (patience 5 evaluations) not every seed reaches 100 % on the 20 held-out
numbers, and the MoE with MLP experts reached it in none of 5 (docs/reproductions.md has the sweep's table). So
each type runs here with a seed that does, and the MoE with 20 evaluations of patience."""
from __future__ import annotations

import csv

import pytest

from tests.analysis.test_analysis import analysis_cli
from tests.conftest import launch_cli, run_quietly

SETTINGS = {"ffn": ["seed=0"], "glu": ["seed=0"], "moe": ["seed=0", "callbacks.early_stopping.patience=20"],
            "moe_glu": ["seed=2"]}
STOP_AT_EXACT = "callbacks.grokking_time.stop_after_steps=0"  # end at the first all-exact validation: what is tested


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{ffn type: (summary, what it printed)} of one run of each type's experiment."""
    base = tmp_path_factory.mktemp("moe_expressivity")
    return {name: run_quietly([f"experiment=moe_expressivity_{name}", *overrides, STOP_AT_EXACT, "threads=1",
                               "callbacks.progress.refresh_seconds=1000"], base / name)
            for name, overrides in SETTINGS.items()}


def test_every_ffn_type_reaches_exact_match_on_held_out_numbers(runs):
    for name, (summary, _) in runs.items():
        assert summary["status"] == "stopped_after_grokking", name  # before early stopping ran out of patience
        assert summary["final"]["val/exact_match"] == 1.0, name
        assert summary["final"]["train/exact_match"] == 1.0, name
        # the best checkpoint: the first validation with every held-out answer exact (20 numbers: 0.99 means 1.0)
        assert summary["final_weights"] == {"from": "checkpoints/best.ckpt",
                                            "step": summary["grok"]["grok/val_exact_match_0.99_step"]}, name


def test_parameter_matching_is_printed_and_within_one_percent(runs):
    for name, (summary, printed) in runs.items():
        ffn = next(line for line in printed.splitlines() if "layer 0 ffn:" in line)
        assert f"net: {summary['parameters']:,} parameters" in printed
        if name == "ffn":
            assert "MLPFFN, 33,088 parameters" in ffn and "matched" not in ffn
            continue
        assert "matched to the dense MLP of hidden 256: 33,088" in ffn, ffn
        assert abs(float(ffn.rsplit(", ", 1)[1].rstrip("%)"))) < 1.0, ffn


def test_the_final_weights_are_analysed(runs):
    for name, (summary, _) in runs.items():
        circuits = summary["circuits"]
        assert circuits["circuits/exact_match"] == 1.0, name  # the analysis reads the same (best) weights
        shares = [circuits[f"circuits/dla/{part}_share"] for part in ("embedding", "attention", "ffn")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert circuits["circuits/ablation/attention_mean"] < 1.0  # without attention no answer is right
        assert ("circuits/moe/mi_expert_operation/layer_0" in circuits) == name.startswith("moe"), name


def test_a_sweep_over_ffn_types_is_one_table_row_per_run_and_a_comparison(tmp_path):
    experiments = "moe_expressivity_ffn,moe_expressivity_moe"
    result = launch_cli(["-m", f"experiment={experiments}", "seed=0", "trainer.max_steps=100", "threads=1",
                         "callbacks.progress.refresh_seconds=1000", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                        cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "analysis"
    result = analysis_cli([tmp_path / "sweep", "--out", out, "--metric", "val/exact_match"])
    assert result.returncode == 0, result.stderr
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((row["experiment"], row["seed"]) for row in rows) == [
        (e, "0") for e in sorted(experiments.split(","))]
    for row in rows:
        assert {"val/exact_match", "circuits/ablation/ffn_mean", "circuits/dla/attention_share"} <= set(row)
        assert (row["circuits/moe/mi_expert_operation/layer_0"] != "") == row["experiment"].endswith("moe")
    assert (out / "compare_by_experiment.png").is_file()

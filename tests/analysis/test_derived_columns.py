"""Columns the sweep table computes (analysis/derived.py): the best validation accuracy over training from
metrics.csv, the last Fourier measures, and steps to 95 % as a ratio to a baseline's; on hand-made run folders whose
numbers are known."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from analysis import load_sweep
from analysis.table import sweep_table
from analysis.sweep import find_jobs
from core.errors import ConfigError
from tests.conftest import ROOT


def make_run(folder, experiment, seed, val_acc, step_95, fourier=None):
    """A finished run: val/acc logged every 10 steps as `val_acc`, the final one in summary.json, grokked at 95 % at
    `step_95` (None: never), `fourier/gini` logged beside val/acc when given."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- experiment={experiment}\n- seed={seed}\n")
    header = "epoch,step,val/acc" + (",fourier/gini" if fourier else "")
    rows = [f"0,{10 * (i + 1) - 1},{acc}" + (f",{fourier[i]}" if fourier else "") for i, acc in enumerate(val_acc)]
    (folder / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")
    summary = {"status": "completed", "steps": 10 * len(val_acc), "seed": seed,
               "final": {"train/acc": 1.0, "val/acc": val_acc[-1]},
               "grok": {"grok/val_acc_0.95_step": step_95}, "grokked": step_95 is not None}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def comparison(tmp_path):
    """Standard vs routed over two seeds, the standard transformer first (as sweep=routed_vs_standard lists it)."""
    make_run(tmp_path / "0", "transformer_grok", 0, [0.2, 0.96, 0.97], 20, fourier=[0.1, 0.5, 0.7])
    make_run(tmp_path / "1", "transformer_grok", 1, [0.3, 0.5, 0.96], 30, fourier=[0.2, 0.4, 0.6])
    make_run(tmp_path / "2", "routed_entropy", 0, [0.1, 0.4, 0.95, 0.6], 100)
    make_run(tmp_path / "3", "routed_entropy", 1, [0.1, 0.25, 0.2], None)  # never got there; best 0.25, final 0.2
    return tmp_path


def test_best_val_accuracy_is_the_maximum_logged_beside_the_final_one(comparison):
    table = load_sweep(comparison)
    assert table["best/val/acc"].tolist() == [0.97, 0.96, 0.95, 0.25]
    assert table["val/acc"].tolist() == [0.97, 0.96, 0.6, 0.2]  # the final one, from summary.json
    columns = list(table.columns)
    assert columns.index("best/val/acc") == columns.index("val/acc") + 1


def test_steps_to_95_percent_as_a_ratio_to_the_first_experiments_median(comparison):
    table = load_sweep(comparison)
    assert table.attrs["swept"] == ["experiment"] and table.attrs["baseline"] == "experiment=transformer_grok"
    ratio = table["ratio/grok/val_acc_0.95_step"]
    # the baseline's median over its seeds is (20 + 30) / 2 = 25 steps
    assert ratio[:3].tolist() == [0.8, 1.2, 4.0] and pd.isna(ratio[3])
    columns = list(table.columns)
    assert columns.index("ratio/grok/val_acc_0.95_step") == columns.index("grok/val_acc_0.95_step") + 1


def test_another_baseline_by_key_and_value(comparison):
    table = sweep_table(find_jobs(comparison), comparison, baseline="experiment=routed_entropy")
    assert table["ratio/grok/val_acc_0.95_step"][:3].tolist() == [0.2, 0.3, 1.0]  # the routed one's 100 steps
    by_seed = sweep_table(find_jobs(comparison), comparison, baseline="seed=1")  # transformer 30, routed never
    assert by_seed["ratio/grok/val_acc_0.95_step"][:3].tolist() == pytest.approx([2 / 3, 1.0, 10 / 3])


def test_no_ratio_without_several_experiments_or_a_baseline(tmp_path):
    make_run(tmp_path / "0", "mlp_grok", 0, [0.5, 0.96], 20)
    make_run(tmp_path / "1", "mlp_grok", 1, [0.5, 0.99], 20)
    table = load_sweep(tmp_path)
    assert table.attrs["baseline"] is None and not any(c.startswith("ratio/") for c in table.columns)


@pytest.mark.parametrize("baseline, message", [
    ("experiment", r"^--baseline='experiment' is not allowed: expected KEY=VALUE with KEY one of the table's columns"),
    ("lr=0.1", r"^--baseline='lr=0.1' is not allowed: expected KEY=VALUE with KEY one of"),
    ("experiment=nanda_grok", r"^--baseline='experiment=nanda_grok' is not allowed: expected a value experiment has "
                              r"in the table: transformer_grok, routed_entropy$"),
])
def test_a_bad_baseline_is_one_line_naming_what_is_allowed(comparison, baseline, message):
    with pytest.raises(ConfigError, match=message):
        sweep_table(find_jobs(comparison), comparison, baseline=baseline)


def test_the_last_fourier_measures_are_columns(comparison):
    table = load_sweep(comparison)
    assert table["fourier/gini"][:2].tolist() == [0.7, 0.6] and table["fourier/gini"][2:].isna().all()


def test_cli_takes_the_baseline(comparison):
    result = subprocess.run([sys.executable, "-m", "analysis", str(comparison), "--baseline", "experiment=routed_entropy",
                             "--grok-key", "grok/val_acc_0.95_step"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    header, _, first, *_ = result.stdout.splitlines()
    cells = dict(zip(header.split(" | "), first.split(" | ")))
    assert cells["best/val/acc"] == "0.97" and cells["ratio/grok/val_acc_0.95_step"] == "0.2"

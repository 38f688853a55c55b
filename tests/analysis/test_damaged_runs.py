"""Damaged run folders (a run killed mid-write, two sweeps writing one folder) are reported, never a crash."""
import shutil

import pandas as pd
import pytest

from analysis import load_run, load_sweep
from analysis.runs import STATUS_BAD_SUMMARY, read_metrics_file
from tests.analysis.test_analysis import analysis_cli
from tests.conftest import SMALL, launch_cli

BAD_SUMMARY = f"status '{STATUS_BAD_SUMMARY}'"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """One real, completed run folder (checkpoints left out of the copies made from it)."""
    base = tmp_path_factory.mktemp("damaged")
    result = launch_cli([*SMALL, "threads=1", f"hydra.run.dir={base / 'run'}"], cwd=base)
    assert result.returncode == 0, result.stderr
    return base / "run"


def copy_run(good_run, folder):
    shutil.copytree(good_run, folder, ignore=shutil.ignore_patterns("*.ckpt", "*.pt"))
    return folder


@pytest.fixture
def damaged_sweep(good_run, tmp_path):
    """Six copies of the good run: 0 intact, then each with one file damaged as a kill or a second writer leaves it.
    Returns (folder, number of data rows in the good metrics.csv, number of fields of its header)."""
    sweep = tmp_path / "sweep"
    runs = [copy_run(good_run, sweep / str(n)) for n in range(6)]
    metrics = (good_run / "metrics.csv").read_text()
    lines = metrics.splitlines(keepends=True)
    fields = len(lines[0].split(","))
    foreign = ",".join(["0"] * (fields + 2)) + "\n"  # a row of another run's longer header
    (runs[1] / "metrics.csv").write_text(metrics[:-8])                                 # killed mid-line
    summary = (runs[2] / "summary.json").read_text()
    (runs[2] / "summary.json").write_text(summary[: len(summary) // 2])                # cut short
    (runs[3] / "metrics.csv").write_text("")                                           # killed before a row
    (runs[4] / "metrics.csv").write_text("".join(lines[:3] + [foreign] + lines[3:]))  # two writers, one file
    (runs[5] / "summary.json").write_text("")
    return sweep, len(lines) - 1, fields


def test_cli_reports_each_damaged_file_and_keeps_every_run(damaged_sweep):
    sweep, rows, fields = damaged_sweep
    result = analysis_cli([sweep])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("[grokking-lab] warning: ")]
    expected = [
        f"{sweep}/1/metrics.csv: last line is incomplete (kept {rows - 1} of {rows} rows)",
        f"{sweep}/2/summary.json: is not valid JSON (",
        f"{sweep}/3/metrics.csv: is empty: no metrics",
        f"{sweep}/4/metrics.csv: 1 row without the header's {fields} fields (kept {rows} of {rows + 1} rows)",
        f"{sweep}/5/summary.json: is empty: {BAD_SUMMARY}",
    ]
    assert len(warnings) == len(expected)
    for line, start in zip(warnings, expected):
        assert line.removeprefix("[grokking-lab] warning: ").startswith(start), line
    assert warnings[1].endswith(f"cut short?): {BAD_SUMMARY}")

    table = pd.read_csv(sweep / "analysis" / "table.csv", dtype={"run": str})
    assert list(table["run"]) == [str(n) for n in range(6)]
    assert list(table["status"]) == ["completed", "completed", STATUS_BAD_SUMMARY, "completed", "completed",
                                     STATUS_BAD_SUMMARY]
    assert table["steps"].isna().tolist() == [False, False, True, False, False, True]
    assert f"| {STATUS_BAD_SUMMARY} |" in result.stdout


def test_loaded_runs_keep_what_is_readable_and_list_their_problems(damaged_sweep):
    sweep, _, _ = damaged_sweep
    good = load_run(sweep / "0")
    assert good.problems == [] and good.status == "completed"
    torn, mixed = load_run(sweep / "1"), load_run(sweep / "4")
    assert len(torn.problems) == 1 and "last line is incomplete" in torn.problems[0]
    # the torn row was the last step's val row: that step keeps its train values only
    pd.testing.assert_frame_equal(torn.metrics.iloc[:-1], good.metrics.iloc[:-1])
    last_good, last_torn = good.metrics.iloc[-1], torn.metrics.iloc[-1]
    assert last_torn["train/acc"] == last_good["train/acc"] and pd.isna(last_torn["val/acc"])
    pd.testing.assert_frame_equal(mixed.metrics, good.metrics)  # the foreign row dropped, the rest as written
    cut = load_run(sweep / "2")
    assert cut.status == STATUS_BAD_SUMMARY and cut.summary == {} and cut.config == good.config
    pd.testing.assert_frame_equal(cut.metrics, good.metrics)
    empty = load_run(sweep / "3")
    assert empty.metrics.empty and empty.last("val/acc") is None and empty.status == "completed"
    assert load_sweep(sweep)["dynamics"].isna().tolist() == [False, False, False, True, False, False]


def test_damaged_hydra_files_and_multirun_yaml_are_reported(good_run, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  sweeper:\n    params: [1, 2\n")  # cut inside a list
    runs = [copy_run(good_run, sweep / str(n)) for n in range(3)]
    (runs[1] / ".hydra" / "config.yaml").write_text("seed: 0\ndata:\n  p: 11\n op")
    (runs[2] / ".hydra" / "hydra.yaml").write_text("hydra:\n  job: {num: 2\n")
    (runs[2] / ".hydra" / "overrides.yaml").write_text("- data.p=11\n- 'seed=[1,'\n")
    result = analysis_cli([sweep, "--out", tmp_path / "out"])
    assert result.returncode == 0, result.stderr
    assert f"warning: {sweep}/multirun.yaml: is not valid YAML (" in result.stderr
    assert f"warning: {sweep}/1/.hydra/config.yaml: is not valid YAML (" in result.stderr
    assert f"warning: {sweep}/2/.hydra/hydra.yaml: is not valid YAML (" in result.stderr
    assert f"warning: {sweep}/2/.hydra/overrides.yaml: override 'seed=[1,' does not parse: ignored" in result.stderr
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    assert list(table["job"]) == [0, 1, 2] and list(table["status"]) == ["completed"] * 3
    assert load_run(runs[2]).overrides["data.p"] == 11


@pytest.mark.parametrize("text, kept, warning", [
    ("epoch,step,a\n0,9,0.5\n0,19,nan\n", [[9, 0.5], [19, None]], None),
    ("epoch,step,a\n", [], None),  # header only: nothing logged yet, nothing wrong
    ("epoch,step,a\n0,9,0.5\n0,19,0.2", [[9, 0.5]], "last line is incomplete (kept 1 of 2 rows)"),
    ("epoch,step,a\n0,9,0.5\n0,9,0.5,1,2\n0,19\n0,29,0.1\n", [[9, 0.5], [29, 0.1]],
     "2 rows without the header's 3 fields (kept 2 of 4 rows)"),
    ("epoch,step,a\n0,9,x\nepoch,step,a\n0,,1\n0,19,0.1\n", [[19, 0.1]],
     "3 rows with text where numbers belong or no integer step (kept 1 of 4 rows)"),
    ("epoch,step,a\n0,9,0.5\n\x00\x00\x00\x00", [[9, 0.5]], "last line is incomplete (kept 1 of 2 rows)"),  # NUL fill
    ("epoch,step,a\n0,9,0.5\n0,1\x00,0.2\n0,19,0.1\n", [[9, 0.5], [19, 0.1]], "1 row with text where numbers"),
    ("", [], "is empty: no metrics"),
    ("epoch,st", [], "header line is incomplete: no metrics"),
    ("epoch,a\n0,1\n", [], "has no step column"),
])
def test_metrics_file_drops_damaged_rows_and_says_why(tmp_path, text, kept, warning):
    file = tmp_path / "metrics.csv"
    file.write_text(text)
    problems = []
    frame = read_metrics_file(file, problems)
    assert frame["step"].dtype == "int64"
    assert [[step, None if pd.isna(a) else a] for step, a in zip(frame["step"], frame.get("a", []))] == kept
    if warning is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(f"{file}: ") and warning in problems[0]

"""Run folders read once and again only when a file changed (analysis/run_cache.py), as the viewer's /api/runs
reads them: an unchanged run is not re-read, a changed one is, a new one is read and a deleted one forgotten."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from analysis.run_cache import RunCache
from analysis.runs import load_run
from viewer import data


def write_run(folder, seed, status="completed"):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
    (folder / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nname: mlp_grok\n")
    (folder / "summary.json").write_text(json.dumps({"status": status, "experiment": "mlp_grok", "seed": seed,
                                                     "steps": 10, "final": {"train/acc": 1.0, "val/acc": 0.5}}))
    (folder / "metrics.csv").write_text("step,train/acc\n0,0.1\n9,1.0\n")


def later(file):
    """Stamp a file one second later than it was, as a write some time after would (any clock granularity)."""
    stat = os.stat(file)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


class Counting:
    def __init__(self):
        self.read = []

    def __call__(self, path):
        self.read.append(path.name)
        return load_run(path)


@pytest.fixture
def runs(tmp_path):
    for seed in range(5):
        write_run(tmp_path / "runs" / f"r{seed}", seed)
    return tmp_path / "runs"


def test_only_changed_runs_are_read_again(runs):
    reads = Counting()
    cache = RunCache(reads)
    first = [cache.load(runs / f"r{seed}") for seed in range(5)]
    assert sorted(reads.read) == [f"r{seed}" for seed in range(5)]
    reads.read.clear()
    again = [cache.load(runs / f"r{seed}") for seed in range(5)]
    assert reads.read == [] and all(a is b for a, b in zip(first, again))
    # a run that goes on: a metrics row appended
    with open(runs / "r1" / "metrics.csv", "a") as f:
        f.write("19,1.0\n")
    # a summary rewritten with the same size (only the time tells)
    summary = (runs / "r3" / "summary.json").read_text()
    (runs / "r3" / "summary.json").write_text(summary.replace('"val/acc": 0.5', '"val/acc": 0.7'))
    later(runs / "r3" / "summary.json")
    # a config written for the first time by Hydra's saved node
    (runs / "r4" / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      model: mlp\n")
    assert [cache.load(runs / f"r{seed}").status for seed in range(5)] == ["completed"] * 5
    assert sorted(reads.read) == ["r1", "r3", "r4"]
    assert cache.load(runs / "r1").metrics["step"].tolist() == [1, 10, 20]
    assert cache.load(runs / "r3").summary["final"]["val/acc"] == 0.7
    assert cache.load(runs / "r4").choices == {"model": "mlp"}


def test_the_runs_page_reads_only_what_changed(runs, monkeypatch):
    reads = Counting()
    monkeypatch.setattr(data, "RUNS", RunCache(reads))
    table = data.runs_table(runs)
    assert len(table["rows"]) == 5 and len(reads.read) == 5
    reads.read.clear()
    assert data.runs_table(runs) == table and reads.read == []  # a refresh of an unchanged folder reads nothing
    summary = json.loads((runs / "r2" / "summary.json").read_text()) | {"status": "running"}
    (runs / "r2" / "summary.json").write_text(json.dumps(summary))
    later(runs / "r2" / "summary.json")
    write_run(runs / "r9", 9)
    shutil.rmtree(runs / "r0")
    table = data.runs_table(runs)
    assert sorted(reads.read) == ["r2", "r9"]
    assert {row["path"]: row["status"] for row in table["rows"]} == {
        "r1": "completed", "r2": "running", "r3": "completed", "r4": "completed", "r9": "completed"}
    assert table["live"] is True
    assert {path.name for path in data.RUNS.runs} == {"r1", "r2", "r3", "r4", "r9"}  # r0 forgotten

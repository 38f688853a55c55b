"""Runs that are killed, stopped by a signal, launched twice in the same second or diverge lose and mix nothing.

Real processes (`python launch.py`, as a user or SLURM starts them): each is stopped mid-run, then continued
with `resume=true`, and must end with the `metrics.csv` rows and final metrics of an uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, launch_cli, metrics_rows, read_json, reproducible_rows

# ~600 steps of a small MLP: a few seconds, so a signal lands mid-run; validation every 20, rows every 10,
# the first checkpoint at the first validation
RUN = ["data.p=23", "trainer.max_steps=600", "trainer.val_check_interval=20", "trainer.log_every_n_steps=10",
       "callbacks.grokking_time.stop_after_steps=null", "callbacks.checkpoint.every_n_train_steps=100", "threads=1"]


def run_here(overrides, run_dir: Path) -> dict:
    """`python launch.py OVERRIDES hydra.run.dir=RUN_DIR`, in this process (no interpreter start-up to pay)."""
    from launch import run
    from runtime.config.compose import compose_config

    threads = torch.get_num_threads()
    try:
        return run(compose_config(["callbacks.progress.refresh_seconds=1000", *overrides], output_dir=run_dir))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every stopped-and-resumed one must match."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert run_here(RUN, run_dir)["status"] == "completed"
    return run_dir


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})


def stop_mid_run(args, cwd: Path, run_dir: Path, signum: int) -> tuple[int, str]:
    """Start a run, send `signum` once its first checkpoint exists, and wait for it to end."""
    process = start(args, cwd)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert process.poll() is None, process.communicate()[0][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stopped_run_resumes_to_the_rows_and_metrics_of_an_uninterrupted_one(tmp_path, straight, signum):
    run_dir = tmp_path / "run"
    code, output = stop_mid_run([*RUN, "hydra.run.dir=run"], tmp_path, run_dir, signum)
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < stopped_at < 600
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL and not (run_dir / "summary.json").exists()
    else:  # a clean stop: recorded, a checkpoint of the very step it stopped at, the shell's exit code
        assert code == 128 + signum, output[-2000:]
        summary = read_json(run_dir / "summary.json")
        assert summary["status"] == "interrupted" and summary["signal"] == signum.name
        assert summary["steps"] == stopped_at
        assert f"{signum.name} received" in output

    run_here([*RUN, "resume=true"], run_dir)
    summary, reference = read_json(run_dir / "summary.json"), read_json(straight / "summary.json")
    assert summary["status"] == "completed" and summary["steps"] == 600
    assert summary["resumed_from_step"] == stopped_at and summary["session_steps"] == 600 - stopped_at
    assert summary["init_fingerprint"] == reference["init_fingerprint"]
    assert summary["final"] == pytest.approx(reference["final"], rel=1e-6, abs=1e-7)
    assert reproducible_rows(run_dir) == reproducible_rows(straight)  # every row once, none lost, same values


def test_resume_without_a_checkpoint_starts_over_and_keeps_what_was_there(tmp_path, straight, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("step,train/loss\n9,0.5\n19,0.4\n29,0.")  # a killed run, no checkpoint
    run_here([*RUN, "resume=true"], run_dir)
    output = capsys.readouterr().out
    assert "resume: no checkpoint in" in output and "starting over" in output
    assert (run_dir / "metrics.attempt-1.csv").read_text().endswith("29,0.")
    assert reproducible_rows(run_dir) == reproducible_rows(straight)


def test_same_folder_name_at_the_same_moment_gives_each_launch_its_own_folder(tmp_path):
    """Folder names have one-second resolution; `${unique_dir:...}` (the default) claims a folder per launch."""
    base = ["data.p=7", "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5"]
    runs = [start([*base, f"seed={seed}", "hydra.run.dir=${unique_dir:runs/same}"], tmp_path) for seed in (0, 1)]
    sweeps = [start(["-m", *base, f"seed={seed},{seed + 10}", "hydra.sweep.dir=${unique_dir:runs/sweep}"], tmp_path)
              for seed in (0, 1)]
    for process in runs + sweeps:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-2000:]
    folders = sorted((tmp_path / "runs").iterdir())
    assert [f.name for f in folders] == ["same", "same_2", "sweep", "sweep_2"]
    jobs = [f for f in folders if f.name.startswith("same")] + [j for f in folders if f.name.startswith("sweep")
                                                              for j in sorted(f.iterdir()) if j.is_dir()]
    assert len(jobs) == 6
    for job in jobs:  # each folder holds one run, whose summary, config and metrics agree
        summary = read_json(job / "summary.json")
        assert f"seed={summary['seed']}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert [int(row["step"]) for row in metrics_rows(job)] == [4, 9, 9, 14, 19, 19]
    assert sorted(read_json(j / "summary.json")["seed"] for j in jobs) == [0, 0, 1, 1, 10, 11]


def test_a_diverged_run_exits_non_zero_and_keeps_its_last_finite_weights(tmp_path):
    result = launch_cli(["optimizer.lr=1e6", "data.p=23", "trainer.max_steps=200", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 1
    assert "[grokking-lab] diverged: training loss is nan" in result.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "diverged"
    assert summary["last_finite_weights"] == "checkpoints/last_finite.pt"
    weights = torch.load(tmp_path / "run" / "checkpoints" / "last_finite.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in weights.values())
    # no NaN passed off as a number: a non-finite final metric is null and named
    assert summary["final"]["non_finite"] and all(summary["final"][k] is None for k in summary["final"]["non_finite"])

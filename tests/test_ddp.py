"""`trainer=ddp`: two CPU processes (gloo), each on its shard of the full batch, train exactly as one process
does, and agree on every decision that ends in a collective: checkpoints by time, stop requests, a NaN on one rank.
A rank that waits on a collective the other never joins hangs, so each launch runs under a timeout that kills
every rank."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, metrics_rows, read_json

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
RUN = ["data.p=23", "trainer.max_steps=30", "trainer.val_check_interval=10", "trainer.log_every_n_steps=10",
       "trainer.gradient_clip_val=0", "callbacks.progress.refresh_seconds=1000"]


def launch_ranks(args, cwd, timeout=150) -> subprocess.CompletedProcess:
    """`python launch.py ARGS`, returned once every rank has ended (they share its stdout and stderr pipes);
    past `timeout` all of them are killed and the test fails as a hang."""
    process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the ranks Lightning started are in this process group
        _, stderr = process.communicate()
        pytest.fail(f"the ranks did not end within {timeout} s (a hang): {stderr[-1500:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-process runs of RUN: {max_steps: (summary, run folder)}."""
    root, runs = tmp_path_factory.mktemp("single"), {}

    def run(steps: int):
        if steps not in runs:
            result = launch_ranks([*RUN, f"trainer.max_steps={steps}", f"hydra.run.dir={root}/{steps}"], cwd=root)
            assert result.returncode == 0, result.stderr[-2000:]
            runs[steps] = read_json(root / str(steps) / "summary.json"), root / str(steps)
        return runs[steps]

    return run


def test_two_process_ddp_matches_a_single_process(tmp_path, single):
    one, one_dir = single(30)
    ddp = launch_ranks([*RUN, *DDP, f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("run folder:") == 1  # only the main process reports
    two = read_json(tmp_path / "ddp" / "summary.json")
    assert two["status"] == "completed" and two["steps"] == 30
    # 264 training examples split 132/132: the mean of the shard means is the full-batch mean
    for key, value in one["final"].items():
        assert two["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    # the training rows too (each rank measures its shard; the logged value is their mean)
    train = lambda run_dir: {(row["step"], key): float(row[key]) for row in metrics_rows(run_dir)  # noqa: E731
                             for key in ("train/loss", "train/acc") if row.get(key)}
    expected, logged = train(one_dir), train(tmp_path / "ddp")
    assert logged.keys() == expected.keys() and len(expected) == 6  # steps 10, 20, 30
    for cell, value in expected.items():
        assert logged[cell] == pytest.approx(value, rel=1e-4, abs=1e-5), cell


def test_ranks_whose_clocks_differ_checkpoint_at_the_same_steps(tmp_path):
    # rank 0's clock runs 1 minute a step, rank 1's 2: alone, rank 1 would save by time at steps 2, 4, ... and
    # rank 0 at 3, 6, ...; they compare on logging steps (every 5) and save together
    result = launch_ranks([*RUN, *DDP, f"hydra.run.dir={tmp_path}/run", "trainer.log_every_n_steps=5",
                           "callbacks.checkpoint._target_=tests.helpers.RankClockCheckpoint",
                           "callbacks.checkpoint.every_minutes=3", "callbacks.checkpoint.every_n_train_steps=null",
                           "trainer.max_steps=20"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "completed" and summary["steps"] == 20
    folder = tmp_path / "run" / "checkpoints"
    saves = [[int(line) for line in (folder / f"saves.rank{rank}").read_text().split()] for rank in (0, 1)]
    assert saves[0] == saves[1]
    # by time at 6 and 16 (the steps after logging steps 5 and 15, which log), the first validation (10), the end
    assert saves[0] == [6, 10, 16, 20]
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 20


@pytest.mark.parametrize("defer", [False, True], ids=["read_every_step", "read_on_log_steps"])
def test_a_nan_on_one_rank_stops_every_rank_at_that_step(tmp_path, single, defer):
    # rank 1's loss is NaN from step 12 on, rank 0's stays finite
    result = launch_ranks([*RUN, *DDP, f"hydra.run.dir={tmp_path}/run",
                           f"callbacks.finite_loss.defer={str(defer).lower()}",
                           "+regularizer.boom._target_=tests.helpers.NaNAfter", "+regularizer.boom.after=12",
                           "+regularizer.boom.rank=1"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]  # a diverged run exits non-zero
    summary = read_json(tmp_path / "run" / "summary.json")  # written by rank 0, whose own loss stayed finite
    assert summary["status"] == "diverged" and summary["steps"] == 12 and "step 12" in summary["error"]
    kept = torch.load(tmp_path / "run" / summary["last_finite_weights"], weights_only=True)
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 10
    # every rank skipped the bad step and those after it: rank 0's weights are those after 12 good steps
    clean, _ = single(12)
    for key, value in clean["final"].items():
        assert summary["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key

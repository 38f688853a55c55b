"""Resuming: `resume=true` skips finished run folders and continues unfinished ones from their last checkpoint;
resumed and restarted folders keep every earlier row and file; checkpoints that cannot be resumed are refused."""
import json

import pytest

from core.errors import ConfigError
from tests.conftest import assert_same_final_metrics, launch_cli, read_json, reproducible_rows

EVERY_10 = ["callbacks.checkpoint.every_n_train_steps=10"]


def test_finished_run_is_skipped(run_config):
    first, run_dir = run_config(EVERY_10)
    again, _ = run_config([*EVERY_10, "resume=true"])
    assert again == first == read_json(run_dir / "summary.json")


def test_interrupted_run_continues_from_its_last_checkpoint_to_the_straight_result(run_config):
    straight, _ = run_config([*EVERY_10, "trainer.max_steps=40"], name="straight")
    _, run_dir = run_config([*EVERY_10, "trainer.max_steps=20"], name="job")
    summary = read_json(run_dir / "summary.json")
    (run_dir / "summary.json").write_text(json.dumps(summary | {"status": "interrupted"}))  # killed at step 20
    resumed, _ = run_config([*EVERY_10, "trainer.max_steps=40", "resume=true"], name="job")
    assert resumed["status"] == "completed" and resumed["steps"] == 40
    assert resumed["init_fingerprint"] == summary["init_fingerprint"]
    assert_same_final_metrics(resumed, straight)


def test_rerun_of_a_finished_multirun_skips_every_job(tmp_path):
    args = ["-m", "data.p=7", "trainer.max_steps=10", "trainer.val_check_interval=5", "optimizer.weight_decay=0.5,1.0",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    assert launch_cli(args, cwd=tmp_path).returncode == 0
    again = launch_cli([*args, "resume=true"], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("resume: already completed, skipped") == 2


def test_extending_a_finished_run_in_its_folder_logs_every_row_once(run_config):
    """A finished 30-step run continued to 60 in place: its metrics.csv is the 60-step run's, row for row."""
    common = ["trainer.log_every_n_steps=5", "callbacks.grokking_time.stop_after_steps=null"]
    run_config([*common, "trainer.max_steps=60"], name="straight")
    _, run_dir = run_config([*common, "trainer.max_steps=30"], name="run")
    resumed, _ = run_config([*common, "trainer.max_steps=60", f"ckpt_path={run_dir}/checkpoints/last.ckpt"],
                            name="run")
    assert resumed["resumed_from_step"] == 30 and resumed["session_steps"] == 30
    assert reproducible_rows(run_dir) == reproducible_rows(run_dir.parent / "straight")


def test_a_fresh_launch_into_a_used_folder_keeps_the_earlier_run(run_config):
    first, run_dir = run_config(["trainer.max_steps=20"])
    again, _ = run_config(["trainer.max_steps=20"])
    assert again["final"] == first["final"]
    assert read_json(run_dir / "summary.attempt-1.json") == first
    # the same run again, the earlier one's rows kept aside
    assert reproducible_rows(run_dir) == reproducible_rows(run_dir, "metrics.attempt-1.csv")
    assert (run_dir / "checkpoints.attempt-1" / "last.ckpt").is_file()


@pytest.mark.parametrize("source", ["init", "other_model", "csv"])
def test_a_checkpoint_that_cannot_be_resumed_is_refused_in_one_line(run_config, source):
    _, run_dir = run_config(["trainer.max_steps=10", "model.hidden_dim=32"], name="other")
    path = {"init": run_dir / "init.pt", "other_model": run_dir / "checkpoints" / "last.ckpt",
            "csv": run_dir / "metrics.csv"}[source]
    with pytest.raises(ConfigError) as info:
        run_config([f"ckpt_path={path}"])
    expected = {"init": "initial weights (init.pt) go to init_from", "other_model": "a checkpoint of this model config",
                "csv": "torch cannot read it"}[source]
    assert str(info.value).startswith(f"ckpt_path='{path}' is not allowed") and expected in str(info.value)

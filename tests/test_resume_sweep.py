"""`resume=true`: a re-run skips finished run folders and continues unfinished ones from their last checkpoint."""
import json

from tests.conftest import assert_same_final_metrics, launch_cli, read_json

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

"""`trainer=ddp`: two CPU processes, each on its shard of the full batch, train exactly as one process does."""
import pytest

from tests.conftest import launch_cli, read_json

RUN = ["data.p=23", "trainer.max_steps=30", "trainer.val_check_interval=10", "trainer.gradient_clip_val=0"]


def test_two_process_ddp_matches_a_single_process(tmp_path):
    single = launch_cli([*RUN, f"hydra.run.dir={tmp_path}/single"], cwd=tmp_path)
    ddp = launch_cli([*RUN, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path)
    assert single.returncode == 0 and ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("run folder:") == 1  # only the main process reports
    one, two = (read_json(tmp_path / name / "summary.json") for name in ("single", "ddp"))
    assert two["status"] == "completed" and two["steps"] == 30
    # 264 training examples split 132/132: the mean of the shard means is the full-batch mean
    for key, value in one["final"].items():
        assert two["final"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key

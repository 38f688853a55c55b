"""When `last.ckpt` is written: by steps, by time, at the first validation and at the end, always at a point from
which Lightning resumes without repeating or skipping a logged row."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import RecordingCheckpoint

RECORD = ["callbacks.checkpoint._target_=tests.helpers.RecordingCheckpoint", "trainer.val_check_interval=20",
          "trainer.log_every_n_steps=10", "callbacks.grokking_time.stop_after_steps=null"]


@pytest.fixture(autouse=True)
def fresh_record():
    RecordingCheckpoint.saved = []


def test_periodic_checkpoints_wait_for_a_validation_end_or_a_step_that_logs_nothing(run_config):
    _, run_dir = run_config([*RECORD, "callbacks.checkpoint.every_n_train_steps=10", "trainer.max_steps=45"])
    # 10 and 30 log a training row after the batch ends, so they move to 11 and 31; 20 and 40 are validation
    # ends; 45 is the last step
    assert RecordingCheckpoint.saved == [11, 20, 31, 40, 45]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 45


def test_checkpoints_by_time(run_config):
    run_config([*RECORD, "callbacks.checkpoint.every_n_train_steps=null", "callbacks.checkpoint.every_minutes=1e-9",
                "trainer.max_steps=25"])
    assert RecordingCheckpoint.saved == [s for s in range(1, 26) if s % 10 or s % 20 == 0]


def test_the_first_validation_is_checkpointed_so_an_early_crash_keeps_something(run_config):
    run_config([*RECORD, "callbacks.checkpoint.every_n_train_steps=null", "callbacks.checkpoint.every_minutes=null",
                "trainer.max_steps=70"])
    assert RecordingCheckpoint.saved == [20, 70]


def test_checkpoints_carry_the_init_fingerprint(run_config):
    summary, run_dir = run_config(["trainer.max_steps=20"])
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(run_dir / "checkpoints" / name, weights_only=False)
        assert checkpoint["init_fingerprint"] == summary["init_fingerprint"]

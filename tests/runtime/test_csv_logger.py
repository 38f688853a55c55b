"""`metrics.csv` across resumes and kills: adopted, never deleted, rewritten atomically, cut back to a checkpoint."""
from __future__ import annotations

import csv

from runtime.logs.csv_logger import RunCSVLogger, read_rows


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_an_existing_file_is_extended_not_erased(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,train/loss\n9,0.5\n19,0.25\n")
    logger = RunCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 0.125}, step=29)
    logger.save()
    assert rows(tmp_path / "metrics.csv") == [{"step": "9", "train/loss": "0.5"}, {"step": "19", "train/loss": "0.25"},
                                              {"step": "29", "train/loss": "0.125"}]


def test_a_torn_last_line_and_malformed_rows_are_dropped_before_appending(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,train/loss\n9,0.5\n10,0.1,7\n19,0.2")  # killed mid-row
    logger = RunCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 0.125}, step=29)
    logger.save()
    assert [row["step"] for row in rows(tmp_path / "metrics.csv")] == ["9", "29"]


def test_a_new_column_rewrites_the_file_with_every_earlier_row(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,train/loss\n9,0.5\n")
    logger = RunCSVLogger(tmp_path)
    logger.log_metrics({"val/acc": 0.75}, step=19)
    logger.save()
    assert rows(tmp_path / "metrics.csv") == [{"step": "9", "train/loss": "0.5", "val/acc": ""},
                                              {"step": "19", "train/loss": "", "val/acc": "0.75"}]
    assert not list(tmp_path.glob("*.tmp"))


def test_resuming_drops_the_rows_past_the_checkpoint(tmp_path):
    """A run killed at step 35 whose checkpoint holds step 20: rows 20+ are logged again by the resumed run."""
    (tmp_path / "metrics.csv").write_text("step,train/loss,val/acc\n9,0.5,\n19,0.4,\n19,,0.1\n29,0.3,\n")
    logger = RunCSVLogger(tmp_path, start_step=20)
    logger.log_metrics({"train/loss": 0.25}, step=20)
    logger.save()
    assert [row["step"] for row in rows(tmp_path / "metrics.csv")] == ["9", "19", "19", "20"]
    header, _ = read_rows(tmp_path / "metrics.csv")
    assert header == ["step", "train/loss", "val/acc"]


def test_rows_reach_the_disk_by_time_not_only_every_hundred_steps(tmp_path):
    logger = RunCSVLogger(tmp_path, flush_seconds=0.0)
    logger.log_metrics({"train/loss": 1.0}, step=0)
    assert rows(tmp_path / "metrics.csv") == [{"step": "0", "train/loss": "1.0"}]
    slow = RunCSVLogger(tmp_path / "slow", flush_seconds=3600)
    slow.log_metrics({"train/loss": 1.0}, step=0)
    assert not (tmp_path / "slow" / "metrics.csv").exists()


def test_an_empty_file_left_by_a_kill_is_replaced(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    logger = RunCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 1.0}, step=4)
    logger.save()
    assert rows(tmp_path / "metrics.csv") == [{"step": "4", "train/loss": "1.0"}]

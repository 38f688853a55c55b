"""The reversed-digit task end to end: `experiment=add7` learns every answer exactly on CPU, judged by exact match
on greedily decoded answers, with per-digit and per-carry-chain metrics."""
from __future__ import annotations

import pytest

from tests.conftest import metrics_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.rounding
def test_add7_reaches_exact_match_on_every_held_out_number(tmp_path):
    from launch import run
    from runtime.config.compose import compose_config

    out = tmp_path / "add7"
    cfg = compose_config(["experiment=add7", "trainer.max_steps=600", "callbacks.grokking_time.stop_after_steps=0",
                          "callbacks.progress.refresh_seconds=1000"], output_dir=out)
    assert cfg.optimized_metric == "val/exact_match"
    summary = run(cfg)
    final = summary["final"]
    assert summary["status"] == "stopped_after_grokking"
    assert final["val/exact_match"] == 1.0 and final["train/exact_match"] == 1.0
    assert [final[f"val/acc/position_{i}"] for i in range(3)] == [1.0, 1.0, 1.0]
    assert {f"val/exact_match/carry_{n}" for n in range(3)} <= set(final)
    assert summary["grok"]["grok/val_exact_match_0.99_step"] is not None
    logged = set(metrics_rows(out)[0])
    assert {"val/exact_match", "val/acc/position_2", "val/exact_match/carry_2", "train/exact_match"} <= logged
    assert (out / "checkpoints" / "best.ckpt").is_file()


def test_an_optimized_metric_the_task_does_not_have_is_refused_in_one_line(tmp_path):
    from core.errors import ConfigError
    from launch import run
    from runtime.config.compose import compose_config

    cfg = compose_config(["optimized_metric=val/exact_match", "data.p=11"], output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"optimized_metric='val/exact_match' is not allowed: expected one of this "
                                          r"task's evaluation metrics: val/loss, val/acc, test/loss, test/acc"):
        run(cfg)

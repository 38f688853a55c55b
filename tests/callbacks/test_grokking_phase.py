"""The grokking callback logs the task's loss bounds once and classifies the run against them."""
import math

import pandas as pd
import pytest

from datamodules.loss_bounds import LossBounds, classify_phase

SEQUENCE = ["model=transformer", "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "data.format=sequence",
            "data.loss_on=all", "data.p=7", "trainer.max_steps=60"]


def test_sequence_run_logs_bounds_and_its_phase(run_config):
    summary, run_dir = run_config(SEQUENCE)
    p = 7
    assert summary["loss_bounds"] == pytest.approx({"generalising": 2 * math.log(p) / 7,
                                                    "random_answer": 3 * math.log(p) / 7})
    m = pd.read_csv(run_dir / "metrics.csv")
    assert m["grok/loss_bound/generalising"].dropna().tolist() == pytest.approx([2 * math.log(p) / 7])
    # the phase is the classification of the last validation's losses
    last_val = m[["step", "val/loss"]].dropna().iloc[-1]
    last_train = m[["step", "train/loss"]].dropna()
    train = last_train[last_train["step"] <= last_val["step"]].iloc[-1]["train/loss"]
    expected = classify_phase(train, last_val["val/loss"], LossBounds(**summary["loss_bounds"]))
    assert summary["loss_phase"] == expected


def test_answer_only_tasks_have_no_bounds_to_classify(run_config):
    summary, _ = run_config([])
    assert "loss_phase" not in summary and "loss_bounds" not in summary

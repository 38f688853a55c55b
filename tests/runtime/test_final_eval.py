"""summary.json's final numbers and best.ckpt against the run's own records: `final` is a fresh evaluation of the
weights it names (the last ones, or best.ckpt's with `final_weights=best`), and best.ckpt holds the best validation
by `optimized_metric` in either `optimized_mode`."""
import pytest
import torch

from tests.conftest import SMALL, assert_same_final_metrics, evaluate_checkpoint, metrics_rows

# In SMALL (p=11, 40 full-batch steps) the MLP memorises its training half and its validation loss rises from one
# validation to the next (2.46, 2.66, 2.96, 3.51 at steps 10-40 on one machine: steps of 0.2-0.5, far beyond any
# rounding), so by val/loss the best validation is the first in mode min and the last in mode max, and best.ckpt
# holds other weights than the last in mode min. The tests assert these orderings before relying on them.
BY_LOSS = ["optimized_metric=val/loss"]


def validations(run_dir, metric="val/loss"):
    """{step: value} of the metric at every validation (metrics.csv rows count steps done - 1), by step."""
    return {int(r["step"]) + 1: float(r[metric]) for r in metrics_rows(run_dir) if r.get(metric)}


def checkpoint_step(path):
    return torch.load(path, weights_only=False)["global_step"]


def test_best_ckpt_holds_the_best_validation_by_the_optimized_metric_in_either_mode(run_config):
    best_steps = {}
    for mode, pick in (("min", min), ("max", max)):
        overrides = [*BY_LOSS, f"optimized_mode={mode}"]
        _, run_dir = run_config(overrides, name=mode)
        logged = validations(run_dir)
        assert sorted(logged) == [10, 20, 30, 40]
        best_steps[mode] = pick(logged, key=logged.get)  # the earliest of equal values, as ModelCheckpoint keeps
        best = run_dir / "checkpoints" / "best.ckpt"
        assert checkpoint_step(best) == best_steps[mode], mode
        # the weights it holds are that step's: evaluated afresh they give the validation loss logged there
        fresh = evaluate_checkpoint([*SMALL, *overrides], best)["val/loss"]
        assert fresh == pytest.approx(logged[best_steps[mode]], rel=1e-5), mode
    assert best_steps == {"min": 10, "max": 40}  # the rising loss (above): the mode decides which is kept


@pytest.mark.parametrize("weights", ["last", "best"])
def test_the_final_numbers_are_an_evaluation_of_the_weights_they_name(run_config, weights):
    overrides = [*BY_LOSS, "optimized_mode=min", f"final_weights={weights}"]
    summary, run_dir = run_config(overrides)
    checkpoints = run_dir / "checkpoints"
    assert checkpoint_step(checkpoints / "last.ckpt") == 40  # last.ckpt stays where training stopped, either way
    best_step = checkpoint_step(checkpoints / "best.ckpt")
    assert best_step < 40  # the rising loss (above): best.ckpt and the last weights differ
    if weights == "last":
        assert "final_weights" not in summary  # the last weights are the default, not named
        named = checkpoints / "last.ckpt"
    else:
        assert summary["final_weights"] == {"from": "checkpoints/best.ckpt", "step": best_step}
        named = run_dir / summary["final_weights"]["from"]
    fresh = evaluate_checkpoint([*SMALL, *overrides], named)
    assert set(fresh) == set(summary["final"]) == {f"{s}/{m}" for s in ("train", "val") for m in ("loss", "acc")}
    assert_same_final_metrics(summary, {"final": fresh})
    # the logged validation of those weights: the last one, or the best one
    logged = validations(run_dir)
    assert summary["final"]["val/loss"] == pytest.approx(logged[40 if weights == "last" else best_step], rel=1e-5)

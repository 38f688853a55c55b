"""The launcher end to end: real short runs, resume, errors, the run folder's files."""
import math

import pytest
import torch

from core.errors import ConfigError
from tests.conftest import (
    SMALL,
    assert_resume_ends_as_straight_run,
    assert_same_final_metrics,
    evaluate_checkpoint,
    metrics_rows,
    read_json,
)

# groks: seeds 0-9 reached val acc 0.99 at steps 1,275-1,725 under AVX-512 and default kernels (seed 0, the
# default: 1,325 / 1,350) and stood at 0.991-1.0 50 steps later; 2,500 steps leave seed 0 a margin larger than the
# spread between seeds (the run stops at grokking + 50, so a run that groks costs no more)
LEARNS = ["data.p=23", "data.train_fraction=0.8", "model.hidden_dim=128", "optimizer.lr=3e-3",
          "trainer.max_steps=2500", "trainer.val_check_interval=25", "trainer.log_every_n_steps=25"]


@pytest.mark.rounding
def test_short_run_learns_addition_and_records_grokking_steps(run_config):
    summary, run_dir = run_config([*LEARNS, "callbacks.grokking_time.stop_after_steps=50"])
    assert summary["final"]["val/acc"] >= 0.95
    assert summary["grokked"] and summary["status"] == "stopped_after_grokking"
    grok = summary["grok"]
    steps = [grok[f"grok/val_acc_{t}_step"] for t in ("0.5", "0.9", "0.95", "0.99")]
    assert all(s is not None for s in steps) and steps == sorted(steps)
    assert summary["steps"] == grok["grok/val_acc_0.99_step"] + 50
    assert grok["grok/train_acc_0.99_step"] is not None
    # metrics.csv indexes rows by steps done - 1; val/acc there first reaches 0.99 on that row
    logged = metrics_rows(run_dir)
    first = min(int(r["step"]) for r in logged if r.get("val/acc") and float(r["val/acc"]) >= 0.99)
    assert first + 1 == grok["grok/val_acc_0.99_step"]
    assert any(r.get("grok/val_acc_0.99_step") for r in logged)


def test_run_folder_holds_summary_metrics_and_checkpoints(run_config):
    summary, run_dir = run_config(["data.test_fraction=0.2"])
    on_disk = read_json(run_dir / "summary.json")
    assert on_disk["status"] == "completed" and on_disk["steps"] == 40
    assert set(on_disk["final"]) == {f"{s}/{m}" for s in ("train", "val", "test") for m in ("loss", "acc")}
    assert on_disk["wall_time_s"] > 0 and on_disk["steps_per_s"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    names = set(metrics_rows(run_dir)[0])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "step"} <= names
    # final numbers are measured on the final weights: they match a fresh evaluation of last.ckpt
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 40
    assert "final_weights" not in on_disk  # named only when they are best.ckpt's
    fresh = evaluate_checkpoint([*SMALL, "data.test_fraction=0.2"], last)
    assert set(fresh) == set(on_disk["final"])
    assert_same_final_metrics(on_disk, {"final": fresh})


@pytest.mark.parametrize("weights", ["last", "best"])
def test_main_returns_the_final_value_of_the_optimized_metric(tmp_path, weights):
    """What a sweeper optimises: the final number of `optimized_metric`, of the weights summary.json's `final` is
    measured on. Judged by val/loss, which this run's final numbers hold beside val/acc."""
    from launch import main
    from runtime.config.compose import compose_config

    out = tmp_path / "run"
    value = main(compose_config([*SMALL, "optimized_metric=val/loss", "optimized_mode=min",
                                 f"final_weights={weights}"], output_dir=out))
    assert value == read_json(out / "summary.json")["final"]["val/loss"]
    # the validations logged at steps 10..40 (rows count steps done - 1): the last one saw the last weights,
    # the lowest one best.ckpt's
    logged = {int(r["step"]) + 1: float(r["val/loss"]) for r in metrics_rows(out) if r.get("val/loss")}
    assert sorted(logged) == [10, 20, 30, 40]
    assert value == pytest.approx(logged[40] if weights == "last" else min(logged.values()), rel=1e-5)


@pytest.mark.parametrize("batch", ["-1", "32"])
def test_resume_continues_to_the_same_final_metrics(run_config, batch):
    common = [f"data.batch_size={batch}", "callbacks.checkpoint.every_n_train_steps=10"]
    assert_resume_ends_as_straight_run(run_config, common, steps=60, stop_at=30)


@pytest.mark.parametrize("defer", [False, True], ids=["read_every_step", "read_on_log_steps"])
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_weights(run_config, defer):
    summary, run_dir = run_config([
        "+regularizer.boom._target_=tests.helpers.NaNAfter", "+regularizer.boom.weight=1.0",
        "+regularizer.boom.after=25", "callbacks.checkpoint.every_n_train_steps=10",
        f"callbacks.finite_loss.defer={str(defer).lower()}",
    ])
    assert summary["status"] == "diverged" and "step 25" in summary["error"]
    assert summary["steps"] == 25
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20  # the last periodic checkpoint, written before the bad step
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert read_json(run_dir / "summary.json")["status"] == "diverged"
    assert all(math.isfinite(v) for v in summary["final"].values())
    # deferred, the guard reads the loss only on logging steps (every 10): steps 26-30 ran, but the fused optimiser
    # skipped them, so the final weights are exactly those of a clean 25-step run, as with a read every step
    clean, clean_dir = run_config(["trainer.max_steps=25"], name="clean")
    assert summary["final"] == clean["final"]
    kept = torch.load(run_dir / summary["last_finite_weights"], weights_only=True)
    clean_weights = torch.load(clean_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(kept[name], clean_weights[f"net.{name}"]) for name in kept)


def test_a_nan_in_one_micro_batch_of_an_accumulated_step_stops_the_run_at_that_step(run_config):
    # two micro-batches a step: the regulariser's call 21 is the first micro-batch of step 10, call 22 (finite)
    # its second; the deferred guard must count both, not let the second overwrite the first
    accumulate = ["+trainer.accumulate_grad_batches=2", "callbacks.finite_loss.defer=true"]
    summary, run_dir = run_config([*accumulate, "+regularizer.boom._target_=tests.helpers.NaNAfter",
                                   "+regularizer.boom.after=20", "+regularizer.boom.until=21"])
    assert summary["status"] == "diverged" and summary["steps"] == 10 and "step 10" in summary["error"]
    clean, _ = run_config([*accumulate, "trainer.max_steps=10"], name="clean")
    assert summary["final"] == clean["final"]  # steps 10 on were skipped on the device: the weights of step 10


def test_same_seed_same_init_other_seed_other_init(run_config):
    a, _ = run_config(["trainer.max_steps=5"], name="a")
    b, _ = run_config(["trainer.max_steps=5"], name="b")
    c, _ = run_config(["trainer.max_steps=5", "seed=1"], name="c")
    assert a["final"] == b["final"] and a["final"] != c["final"]


@pytest.mark.parametrize("override", ["data.p=15", "data.operations=[div]", "data.operations=[add,mul]",
                                      "trainer.precision=bf16-mixed"])
def test_valid_overrides_run(run_config, override):
    """A composite modulus is fine for addition (only division needs a prime); multi-op one-hot works."""
    summary, _ = run_config([override, "trainer.max_steps=2"])
    assert summary["status"] == "completed"


def test_final_numbers_under_bf16_are_those_validation_logged_for_the_same_weights(run_config):
    # the last validation (step 40) saw the final weights; the final numbers must come from the same bf16 forward.
    # Margin: both are one computation on the same weights; only the logger's float32 could round (rel <= 6e-8).
    # An fp32 forward differs by bf16's rounding: 7e-6 relative in this run, 70 times the tolerance
    summary, run_dir = run_config(["trainer.precision=bf16-mixed"])
    assert summary["steps"] == 40 and summary["final_precision"] == "bf16-mixed"
    last = [row for row in metrics_rows(run_dir) if row.get("val/loss")][-1]
    assert int(last["step"]) == 39  # the row of step 40 (0-based index)
    assert summary["final"]["val/loss"] == pytest.approx(float(last["val/loss"]), rel=1e-7)
    assert summary["final"]["val/acc"] == pytest.approx(float(last["val/acc"]), abs=1e-7)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.p=15", "data.operations=[div]"], "data.p=15 is not allowed: expected a prime for operation 'div'"),
        (["data.train_fraction=1.5"], "data.train_fraction=1.5"),
        (["data.batch_size=0"], "data.batch_size=0"),
        (["model.hidden_dim=0"], "model.hidden_dim=0"),
        (["optimizer.lr=-1"], "optimizer.lr=-1"),
        (["ckpt_path=/no/such/file.ckpt"], "ckpt_path='/no/such/file.ckpt'"),
        (["model=transformer"], "data.format='onehot inputs' is not allowed: expected tokens or sequence"),
        (["data.format=tokens"], "expected onehot for model MLP"),
        (["+model.num_classes=5"], "model.num_classes=5 is not allowed: expected unset"),
        (["callbacks.grokking_time.stop_after_steps=-1"], "callbacks.grokking_time.stop_after_steps=-1"),
        (["regularizer=entropy", "regularizer.entropy.weight=-1"],
         "regularizer.entropy.weight=-1 is not allowed: expected a number >= 0"),
        (["data.test_fraction=0.6"], "data.test_fraction=0.6 is not allowed: expected train + val + test fractions "
                                     "<= 1 with room for val (train 0.5 + test 0.6 = 1.1)"),
        (["model=transformer", "data.format=tokens", "model.n_heads=3"],
         "model.n_heads=3 is not allowed: expected a divisor of model.d_model=128"),
        (["data.p=100003"], "data.p=100003 is not allowed: expected a size whose data fit in memory "
                            "(10,000,600,009 examples need ~24.0 PB; limit "),
    ],
)
def test_bad_values_raise_one_clear_error(run_config, overrides, message):
    with pytest.raises(ConfigError) as info:
        run_config(overrides)
    assert message in str(info.value)

"""The conditions-for-grokking study's eight runs compose to the settings of its 'Runs Summary' table, at both sizes."""
import pytest

from runtime.config.compose import compose_config

# run: (layers, batch (None = full), wd, answer-only mask, 3-way split)
TABLE = {1: (2, 512, 0.0, True, True), 2: (2, 512, 1.0, True, True), 3: (2, None, 0.0, True, False),
         4: (2, None, 1.0, True, False), 5: (1, None, 0.0, True, False), 6: (1, None, 1.0, True, False),
         7: (1, None, 0.0, False, False), 8: (1, None, 1.0, False, False)}


@pytest.mark.parametrize("run", sorted(TABLE))
def test_each_run_matches_the_seed_table(run, tmp_path):
    layers, batch, wd, answer_only, three_way = TABLE[run]
    cfg = compose_config(["experiment=conditions_study", f"conditions=r{run}"], output_dir=tmp_path)
    assert (cfg.data.p, cfg.data.format, cfg.optimizer.lr, cfg.optimizer.betas[1]) == (97, "sequence", 1e-3, 0.98)
    assert cfg.trainer.max_steps == 50_000 and cfg.seed == 1337
    assert cfg.model.n_layers == layers and cfg.optimizer.weight_decay == wd
    assert cfg.data.batch_size == (batch or -1)
    assert cfg.data.loss_on == ("answer" if answer_only else "all")
    assert (cfg.data.test_fraction > 0) == three_way and cfg.data.train_fraction == 0.5
    small = compose_config(["experiment=conditions_study", "size=cpu", f"conditions=r{run}"], output_dir=tmp_path)
    assert small.data.p == 23 and small.model.n_layers == layers and small.data.batch_size == (32 if batch else -1)


def test_the_analysis_table_has_the_seeds_loss_columns(tmp_path):
    """The seed's runs table reads losses: final train / val loss, val loss at step 500, the gap and the bounds beside
    them. Run 7 at CPU size (loss on all 7 positions, p=23), 600 steps."""
    import math

    from analysis import load_sweep
    from tests.conftest import metrics_rows, run_quietly

    summary, _ = run_quietly(["experiment=conditions_study", "size=cpu", "conditions=r7", "trainer.max_steps=600",
                              "trainer.val_check_interval=100", "trainer.log_every_n_steps=100", "threads=1",
                              "callbacks.progress.refresh_seconds=1000"], tmp_path / "r7")
    (row,) = load_sweep(tmp_path / "r7").to_dict(orient="records")
    final = summary["final"]
    assert row["train/loss"] == final["train/loss"] and row["val/loss"] == final["val/loss"]
    assert row["loss_gap"] == pytest.approx(final["val/loss"] - final["train/loss"], rel=1e-12)
    # metrics.csv's step column counts steps done - 1: the validation after 500 steps is on row 499
    (at_500,) = [float(r["val/loss"]) for r in metrics_rows(tmp_path / "r7") if r["step"] == "499" and r["val/loss"]]
    assert row["val/loss@500"] == at_500 != final["val/loss"]
    # p=23, loss on all 7 positions: a and b cost ln 23 each, a guessed answer one more (datamodules/loss_bounds.py)
    assert row["loss_bound/generalising"] == pytest.approx(2 * math.log(23) / 7, rel=1e-12)
    assert row["loss_bound/random_answer"] == pytest.approx(3 * math.log(23) / 7, rel=1e-12)
    assert "test/loss" not in row  # a 50/50 split has no test split

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

"""least_action composes to the least-action study's ExperimentConfig (its plan's section 3) and trains on after
grokking with the gates callback on; its sweep presets (phases 2, 3, 5) and its routed experiment compose."""
from runtime.config.compose import compose_config


def test_least_action_has_the_studys_experiment_config():
    cfg = compose_config(["experiment=least_action"])
    data, model, optimizer, trainer = cfg.data, cfg.model, cfg.optimizer, cfg.trainer
    assert (cfg.seed, data.p, list(data.operations), data.train_fraction, data.batch_size) == (42, 113, ["add"], 0.3,
                                                                                               -1)
    assert (model._target_.rsplit(".", 1)[-1], model.hidden_dim, model.n_layers, model.gate_type, model.gate_init,
            model.gate_scope) == ("GatedMLP", 128, 10, "sigmoid", 1.0, "layer")
    assert (cfg.regularizer.compute.kind, cfg.regularizer.compute.weight) == ("sum", 0.01)
    assert (optimizer.lr, optimizer.weight_decay, optimizer.warmup_steps) == (1e-3, 0.1, 500)
    assert (trainer.max_steps, trainer.val_check_interval) == (50_000, 100)


def test_least_action_watches_the_gates_after_grokking():
    cfg = compose_config(["experiment=least_action"])
    assert cfg.callbacks.grokking_time.stop_after_steps is None  # mlp_grok stops 500 steps after val acc 0.99
    assert cfg.callbacks.gates._target_ == "callbacks.diagnostics.gates.GateDiagnostics"

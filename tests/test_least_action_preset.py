"""least_action composes to the least-action study's ExperimentConfig (its plan's section 3) and trains on after
grokking with the gates callback on; its sweep presets (phases 2, 3, 5) and its routed experiment compose."""
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from runtime.config.compose import CONF_DIR, compose_config


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


def preset_jobs(overrides):
    """Each job of a multirun preset: the overrides Hydra's basic sweeper makes of its params."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return batch


@pytest.mark.parametrize("sweep, cells", [
    ("least_action_depth", [{"model.n_layers": n} for n in (4, 8, 10, 16)]),  # 3a, 3b, (the baseline), 3c
    ("least_action_width", [{"model.hidden_dim": w} for w in (64, 128, 256)]),  # 3d, (the baseline), 3e
    ("least_action_difficulty", [{"data.p": p, "data.operations": [op]} for p in (17, 113, 251)
                                 for op in ("add", "mul")]),  # 5a-5c (add), 5d (mul at 113)
])
def test_the_phase_3_and_5_presets_are_the_studys_cells_and_compose(sweep, cells):
    jobs = preset_jobs(["experiment=least_action", f"sweep={sweep}"])
    composed = []
    for job in jobs:
        cfg = compose_config(["experiment=least_action", *job])
        composed.append({key: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                         for key in cells[0] for v in [OmegaConf.select(cfg, key)]})
    assert composed == cells


def test_least_action_routed_is_the_routed_network_on_the_studys_settings():
    cfg = compose_config(["experiment=least_action_routed"])
    study = compose_config(["experiment=least_action"])
    assert cfg.model._target_ == "nets.RoutedMLP"
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (128, 10, 4)
    for key in ("seed", "data", "optimizer", "trainer"):  # everything but the net and its regulariser
        assert cfg[key] == study[key], key
    assert dict(cfg.regularizer) == {} and cfg.callbacks.gates is None
    assert cfg.callbacks.routing._target_ == "callbacks.diagnostics.routing.RoutingDiagnostics"
    cpu = compose_config(["experiment=least_action_routed", "size=cpu"])
    assert (cpu.data.p, cpu.model.d_model, cpu.model.n_layers, cpu.trainer.max_steps) == (23, 64, 4, 3000)

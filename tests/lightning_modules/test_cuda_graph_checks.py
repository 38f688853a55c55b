"""What `module.cuda_graph=true` refuses, checked without a GPU: a trainer stand-in that claims one, and every
full-batch preset's own parts (all but the device check, which needs CUDA)."""
from types import SimpleNamespace

import pytest
import torch

from callbacks import FiniteLossGuard, GrokkingTime, RunCheckpoint, TemperatureAnnealing
from callbacks.interventions.grokfast import Grokfast
from callbacks.run.throughput import Throughput
from core.errors import ConfigError
from datamodules import ModularArithmetic
from lightning_modules.cuda_graph import check_graphable, check_step_setup
from tests.conftest import ROOT


def trainer(callbacks=(), precision="32-true", batch_size=-1):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), world_size=1,
                           precision=precision, datamodule=ModularArithmetic(p=7, batch_size=batch_size),
                           callbacks=list(callbacks))


def test_the_default_callbacks_are_allowed(tmp_path):
    # RunCheckpoint's on_train_batch_start and Throughput's run before a step starts, around the replay
    check_graphable(trainer([FiniteLossGuard(), GrokkingTime(), RunCheckpoint(str(tmp_path)), Throughput()]), None)


@pytest.mark.parametrize("callback, name", [(Grokfast(), "Grokfast"),
                                            (TemperatureAnnealing(1.0, 0.1), "TemperatureAnnealing")])
def test_callbacks_acting_inside_a_step_are_refused_by_name(callback, name):
    with pytest.raises(ConfigError, match=f"module.cuda_graph=True is not allowed: expected false with {name}"):
        check_graphable(trainer([callback]), None)


@pytest.mark.parametrize("setting, message", [({"precision": "bf16-mixed"}, "precision=bf16-mixed"),
                                              ({"batch_size": 8}, "mini-batches")])
def test_other_settings_a_graph_cannot_honour_are_refused(setting, message):
    with pytest.raises(ConfigError, match=message):
        check_graphable(trainer(**setting), None)


def test_a_task_without_an_in_memory_training_split_is_refused_by_name():
    setting = trainer()
    setting.datamodule = type("TextStream", (), {"train_dataloader": lambda self: iter(())})()  # no `splits`
    with pytest.raises(ConfigError, match="expected false for TextStream, which holds no training split in memory"):
        check_graphable(setting, None)


def test_a_decaying_learning_rate_is_refused():
    from lightning_modules.optimization import AdamWRecipe

    module = SimpleNamespace(recipe=AdamWRecipe(schedule="cosine", decay_steps=100), net=None)
    with pytest.raises(ConfigError, match="optimizer.schedule=cosine"):
        check_graphable(trainer(), module)


def test_the_device_check_needs_cuda():
    setting = trainer()
    setting.strategy.root_device = torch.device("cpu")
    with pytest.raises(ConfigError, match="expected false unless training on a CUDA device"):
        check_graphable(setting, None)
    check_step_setup(setting, None, setting.datamodule)  # the rest holds on a CPU


EXPERIMENTS = sorted(path.stem for path in (ROOT / "conf" / "experiment").glob("*.yaml"))
# the presets a captured step must refuse, with why
REFUSED = {"least_action_gumbel": "TemperatureAnnealing, which changes net.temperature between steps"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_full_batch_preset_passes_the_captured_step_checks_with_its_own_callbacks(tmp_path, experiment):
    """The preset's real data, module, callbacks and trainer (built as a launch builds them, on this machine's
    device) through every check but the device's."""
    from runtime.config.compose import compose_config
    from runtime.engines.solo import SoloEngine
    from runtime.lifecycle.run import assemble

    cfg = compose_config([f"experiment={experiment}", "module.cuda_graph=true"], output_dir=tmp_path)
    if cfg.data.get("batch_size") != -1:
        pytest.skip(f"data.batch_size={cfg.data.get('batch_size')}: mini-batches, which a captured step refuses")
    parts = assemble(SoloEngine(cfg))
    if experiment in REFUSED:
        with pytest.raises(ConfigError, match=f"module.cuda_graph=True is not allowed: expected false with "
                                              f"{REFUSED[experiment]}"):
            check_step_setup(parts.trainer, parts.module, parts.datamodule)
    else:
        check_step_setup(parts.trainer, parts.module, parts.datamodule)


def test_sparse_token_routing_is_captured_and_a_mixture_of_experts_is_not():
    """Sparse routing's shapes follow the length alone (a fixed capacity per block), so the captured step takes a
    hybrid LM that routes sparsely; a mixture of experts still reads its experts' token counts on the host."""
    from functools import partial

    from nets import GatedDeltaNet, HybridLM, MoEFFN, SoftmaxAttention

    def hybrid(**settings):
        return HybridLM(7, 7, 8, layers=["gdn", "routed"], d_model=8, gdn=partial(GatedDeltaNet, n_heads=2),
                        attn=partial(SoftmaxAttention, n_heads=2), **settings)

    check_step_setup(trainer(), SimpleNamespace(net=hybrid(routing_mode="sparse")), trainer().datamodule)
    with pytest.raises(ConfigError, match="a net whose parts route tokens by the data"):
        check_step_setup(trainer(), SimpleNamespace(net=hybrid(ffn=partial(MoEFFN, n_experts=2))),
                         trainer().datamodule)

"""What `module.cuda_graph=true` refuses, checked without a GPU (a trainer stand-in that claims one)."""
from types import SimpleNamespace

import pytest
import torch

from callbacks import FiniteLossGuard, GrokkingTime, TemperatureAnnealing
from callbacks.grokfast import Grokfast
from datamodules import ModularArithmetic
from lightning_modules.cuda_graph import check_graphable
from runtime.errors import ConfigError


def trainer(callbacks=(), precision="32-true", batch_size=-1):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), world_size=1,
                           precision=precision, datamodule=ModularArithmetic(p=7, batch_size=batch_size),
                           callbacks=list(callbacks))


def test_the_default_callbacks_are_allowed():
    check_graphable(trainer([FiniteLossGuard(), GrokkingTime()]))


@pytest.mark.parametrize("callback, name", [(Grokfast(), "Grokfast"),
                                            (TemperatureAnnealing(1.0, 0.1), "TemperatureAnnealing")])
def test_callbacks_acting_inside_a_step_are_refused_by_name(callback, name):
    with pytest.raises(ConfigError, match=f"module.cuda_graph=True is not allowed: expected false with {name}"):
        check_graphable(trainer([callback]))


@pytest.mark.parametrize("setting, message", [({"precision": "bf16-mixed"}, "precision=bf16-mixed"),
                                              ({"batch_size": 8}, "mini-batches")])
def test_other_settings_a_graph_cannot_honour_are_refused(setting, message):
    with pytest.raises(ConfigError, match=message):
        check_graphable(trainer(**setting))


def test_a_task_without_an_in_memory_training_split_is_refused_by_name():
    setting = trainer()
    setting.datamodule = type("TextStream", (), {"train_dataloader": lambda self: iter(())})()  # no `splits`
    with pytest.raises(ConfigError, match="expected false for TextStream, which holds no training split in memory"):
        check_graphable(setting)


def test_a_decaying_learning_rate_is_refused():
    from lightning_modules.optimization import AdamWRecipe

    setting = trainer()
    setting.lightning_module = SimpleNamespace(recipe=AdamWRecipe(schedule="cosine", decay_steps=100), net=None)
    with pytest.raises(ConfigError, match="optimizer.schedule=cosine"):
        check_graphable(setting)

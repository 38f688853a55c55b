"""LightningModules: loss, regularisers, optimiser groups, metrics."""
from lightning_modules.optimization import AdamWRecipe
from lightning_modules.param_groups import DecayPolicy
from lightning_modules.regularizers import Regularizer
from lightning_modules.task_module import TaskModule

__all__ = ["AdamWRecipe", "DecayPolicy", "TaskModule", "Regularizer"]

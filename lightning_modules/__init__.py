"""LightningModules: loss, regularisers, optimiser groups, metrics."""
from lightning_modules.grokking_module import GrokkingModule
from lightning_modules.optimization import AdamWRecipe
from lightning_modules.param_groups import DecayPolicy
from lightning_modules.regularizers import Regularizer

__all__ = ["AdamWRecipe", "DecayPolicy", "GrokkingModule", "Regularizer"]

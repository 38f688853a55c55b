"""Plain nn.Modules (no Lightning, no Hydra). Each forward returns a `NetOutput`.

A module that owns raw `nn.Parameter`s states their roles (weight, bias, norm, embedding) in a `parameter_roles`
class attribute, so that weight decay treats them as what they are (lightning_modules/param_groups.py).
"""
from nets.gated_mlp import GatedMLP
from nets.mlp import MLP
from nets.output import NetOutput
from nets.routed_mlp import RoutedMLP
from nets.routed_transformer import RoutedTransformer
from nets.transformer import Transformer

__all__ = ["GatedMLP", "MLP", "NetOutput", "RoutedMLP", "RoutedTransformer", "Transformer"]

"""Plain nn.Modules (no Lightning, no Hydra). Each forward returns a `NetOutput`."""
from nets.gated_mlp import GatedMLP
from nets.mlp import MLP
from nets.output import NetOutput
from nets.routed_mlp import RoutedMLP
from nets.routed_transformer import RoutedTransformer
from nets.transformer import Transformer

__all__ = ["GatedMLP", "MLP", "NetOutput", "RoutedMLP", "RoutedTransformer", "Transformer"]

"""Plain nn.Modules (no Lightning, no Hydra; from the project only the ground floor, core/). Three levels:

kernels/  the maths of a mechanism as functions: the gated delta rule (recurrent reference and chunked form),
          where flash-linear-attention's fused kernel may run it instead (fla_choice), rotary positions
parts/    what a transformer block is made of: mixers (softmax attention, Gated DeltaNet, the per-token routed mixer,
          their short convolution), FFNs (MLP, GLU, routed heads, mixtures of experts, parameter matching), routers
          (the token router, parallel heads' gate) and the block itself
models/   whole nets: MLP, gated and routed MLPs, the transformer, the hybrid LM

Each model's forward returns a `core.output.NetOutput`. A module that owns raw `nn.Parameter`s states their roles
(weight, bias, norm, embedding) in a `parameter_roles` class attribute, so that weight decay treats them as what they
are (lightning_modules/param_groups.py). Bad constructor arguments raise `core.errors.ConfigError`, which the
launcher reports under the config key.
"""
from core.output import NetOutput
from nets.kernels.gated_delta import chunk_gated_delta_rule, recurrent_gated_delta_rule
from nets.kernels.rotary import apply_rotary
from nets.models.gated_mlp import GatedMLP
from nets.models.hybrid_lm import HybridLM
from nets.models.mlp import MLP
from nets.models.routed_mlp import RoutedMLP
from nets.models.transformer import Transformer
from nets.parts.attention import SoftmaxAttention
from nets.parts.block import Block
from nets.parts.ffns import GLUFFN, MLPFFN, RoutedFFN
from nets.parts.gated_deltanet import GatedDeltaNet
from nets.parts.moe import MoEFFN
from nets.parts.routed_mixer import RoutedMixer
from nets.parts.token_router import TokenRouter

__all__ = ["Block", "GLUFFN", "GatedDeltaNet", "GatedMLP", "HybridLM", "MLP", "MLPFFN", "MoEFFN", "NetOutput",
           "RoutedFFN", "RoutedMLP", "RoutedMixer", "SoftmaxAttention", "TokenRouter", "Transformer", "apply_rotary",
           "chunk_gated_delta_rule", "recurrent_gated_delta_rule"]

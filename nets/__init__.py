"""Plain nn.Modules (no Lightning, no Hydra; nothing from outside nets/). Each forward returns a `NetOutput`.

A module that owns raw `nn.Parameter`s states their roles (weight, bias, norm, embedding) in a `parameter_roles`
class attribute, so that weight decay treats them as what they are (lightning_modules/param_groups.py). Bad
constructor arguments raise `InvalidSetting` (nets/settings.py), which the launcher reports under the config key.
The transformer is assembled from parts (nets/block.py): a mixer (nets/mixers.py) and an FFN (nets/ffns.py,
nets/moe.py). nets/gated_delta.py holds the Gated DeltaNet recurrence (recurrent and chunked forms);
nets/gdn_kernel.py decides where flash-linear-attention's kernel runs it instead.
nets/hybrid_lm.py: GDN / softmax-attention hybrid LM, routed per token (token_router.py, routed_mixer.py, rotary.py).
"""
from nets.block import Block
from nets.ffns import GLUFFN, MLPFFN, RoutedFFN
from nets.gated_delta import chunk_gated_delta_rule, recurrent_gated_delta_rule
from nets.gated_mlp import GatedMLP
from nets.gdn_mixer import GatedDeltaNet
from nets.hybrid_lm import HybridLM
from nets.mixers import SoftmaxAttention
from nets.mlp import MLP
from nets.moe import MoEFFN
from nets.output import NetOutput
from nets.rotary import apply_rotary
from nets.routed_mixer import RoutedMixer
from nets.routed_mlp import RoutedMLP
from nets.settings import InvalidSetting
from nets.token_router import TokenRouter
from nets.transformer import Transformer

__all__ = ["Block", "GLUFFN", "GatedDeltaNet", "GatedMLP", "HybridLM", "InvalidSetting", "MLP", "MLPFFN", "MoEFFN",
           "NetOutput", "RoutedFFN", "RoutedMLP", "RoutedMixer", "SoftmaxAttention", "TokenRouter", "Transformer",
           "apply_rotary", "chunk_gated_delta_rule", "recurrent_gated_delta_rule"]

"""The one object every net returns, so loss, regularisers and callbacks read the same tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class NetOutput:
    """Logits plus whatever auxiliary tensors a net has.

    logits: (batch, classes) for nets that answer once, (batch, positions, classes) for sequence nets.
    routing: per layer, the routing weights (..., n_heads) of routed nets; each sums to 1 over heads.
    gates: (n_layers,) or (batch, n_layers) gate values in [0, 1] of gated-depth nets.
    layer_flops: (n_layers,) FLOPs per example of each gated layer (what closing its gate saves), for
        FLOP-weighted compute penalties.
    attention: per layer, attention probabilities (batch, heads, query, key), only when asked for.
    """

    logits: Tensor
    routing: list[Tensor] = field(default_factory=list)
    gates: Tensor | None = None
    layer_flops: Tensor | None = None
    attention: list[Tensor] = field(default_factory=list)

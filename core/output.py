"""The one object every net returns, so loss, regularisers and callbacks read the same tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class NetOutput:
    """Logits plus whatever auxiliary tensors a net has.

    logits: (batch, classes) for nets that answer once, (batch, positions, classes) for sequence nets.
    aux: auxiliary tensors keyed by where they come from, `layer_<i>/<slot>/<name>` for nets built of parts
        (`layer_1/ffn/routing`, `layer_0/mixer/attention`), `layer_<i>/<name>` for others (`layer_0/routing`),
        added in layer order. Routing weights (..., n_heads) sum to 1 over heads; attention probabilities are
        (batch, heads, query, key), present only when asked for.
    gates: (n_layers,) or (batch, n_layers) gate values in [0, 1] of gated-depth nets.
    layer_flops: (n_layers,) FLOPs per example of each gated layer (what closing its gate saves), for
        FLOP-weighted compute penalties.
    """

    logits: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)
    gates: Tensor | None = None
    layer_flops: Tensor | None = None

    def named(self, name: str) -> dict[str, Tensor]:
        """The aux tensors called `name` (key `<name>` or ending in `/<name>`), by key, in layer order."""
        return {key: t for key, t in self.aux.items() if key == name or key.endswith(f"/{name}")}

    @property
    def routing(self) -> list[Tensor]:
        """Routing weights, one tensor per router in layer order (every aux `.../routing`)."""
        return list(self.named("routing").values())

    @property
    def attention(self) -> list[Tensor]:
        """Attention probabilities, one tensor per layer (every aux `.../attention`); empty unless asked for."""
        return list(self.named("attention").values())

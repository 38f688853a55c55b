"""Compute-cost penalties on the gates of gated-depth nets (the least-action study).

| kind | term |
|---|---|
| sum | sum_l g_l (the effective depth) |
| weighted | sum_l g_l * flops_l / max_k flops_k (heavier layers cost more) |
| entropy | sum_l H(g_l), H the binary entropy: penalises half-on gates |
| sum+entropy | sum + entropy |

`flops_l` is the net's `layer_flops`: what running layer l costs (nets.models.gated_mlp: 2 w_l^2 per example, so layers
of different widths weigh differently). Dividing by the heaviest layer's keeps `weight` on the scale of `sum`:
the heaviest layer costs one gate, and with one width for every layer `weighted` equals `sum`.
"""
from __future__ import annotations

from torch import Tensor

from core.errors import require
from core.output import NetOutput
from regularizers.base import Regularizer


def binary_entropy(g: Tensor) -> Tensor:
    g = g.clamp(1e-6, 1 - 1e-6)
    return -(g * g.log() + (1 - g) * (1 - g).log())


class ComputeCost(Regularizer):
    KINDS = ("sum", "weighted", "entropy", "sum+entropy")

    def __init__(self, kind: str, weight: float):
        super().__init__(weight)
        require(kind in self.KINDS, "kind", kind, ", ".join(self.KINDS))
        self.kind = kind

    def term(self, output: NetOutput) -> Tensor:
        if output.gates is None:
            raise ValueError(f"the '{self.kind}' compute cost needs a net that returns gates")
        g = output.gates
        if self.kind == "weighted":
            if output.layer_flops is None:
                raise ValueError("the 'weighted' compute cost needs a net that returns layer_flops")
            return (g * (output.layer_flops / output.layer_flops.max())).sum()
        cost = g.sum() if self.kind in ("sum", "sum+entropy") else 0
        return cost + binary_entropy(g).sum() if "entropy" in self.kind else cost

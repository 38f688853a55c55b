"""Compute-cost penalties on the gates of gated-depth nets (the least-action study).

| kind | term |
|---|---|
| sum | sum_l g_l (the effective depth) |
| weighted | sum_l g_l * c_l (heavier layers cost more), c_l by `scale` |
| entropy | sum_l H(g_l), H the binary entropy: penalises half-on gates |
| sum+entropy | sum + entropy |

Input-dependent gates (batch, n_layers) give each example its own term; the cost is their mean over examples
(per-layer gates: the same for every example).

`weighted`'s layer costs come from the net's `layer_flops`, what running layer l costs per example
(nets.models.gated_mlp: 2 w_l^2 FLOPs, one w_l x w_l matmul), by `scale`:
- `relative` (the default): c_l = flops_l / max_k flops_k. The heaviest layer costs one gate, so `weight` stays on
  the scale of `sum`, and with one width for every layer `weighted` equals `sum`;
- `flops`: the least-action study's own scale, c_l = s_in * s_out of layer l (its compute_cost_weighted multiplies
  the gates by these raw numbers: multiply-adds, half the FLOPs; 16,384 for a 128-wide layer), so the study's λ
  reads as written. λ at `relative` equals λ at `flops` times max_k s_in * s_out (16,384 at width 128).
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
    SCALES = ("relative", "flops")

    def __init__(self, kind: str, weight: float, scale: str = "relative"):
        super().__init__(weight)
        require(kind in self.KINDS, "kind", kind, ", ".join(self.KINDS))
        require(scale in self.SCALES, "scale", scale, "relative (each layer's FLOPs over the heaviest layer's) or "
                "flops (the least-action study's raw s_in * s_out per layer)", related=["kind"])
        self.kind, self.scale = kind, scale

    def layer_costs(self, output: NetOutput) -> Tensor:
        """c_l of `weighted`, by `scale` (module docstring)."""
        if output.layer_flops is None:
            raise ValueError("the 'weighted' compute cost needs a net that returns layer_flops")
        flops = output.layer_flops
        return flops / flops.max() if self.scale == "relative" else flops / 2  # 2 FLOPs per multiply-add

    def term(self, output: NetOutput) -> Tensor:
        if output.gates is None:
            raise ValueError(f"the '{self.kind}' compute cost needs a net that returns gates")
        g = output.gates  # (n_layers,) or (batch, n_layers): one term per example, then their mean
        if self.kind == "weighted":
            return (g * self.layer_costs(output)).sum(-1).mean()
        cost = g.sum(-1) if self.kind in ("sum", "sum+entropy") else 0
        cost = cost + binary_entropy(g).sum(-1) if "entropy" in self.kind else cost
        return cost.mean()

"""Mixture-of-experts regularisers: they read the aux tensors of MoE layers (nets/parts/moe.py: `.../routing` router
probabilities (..., E), `.../expert_index` choices (..., k), `.../router_logits` (..., E)) and return the mean over
the selected layers of a per-layer term. `where` selects layers as the routing regularisers' does
(regularizers/routing.py: a glob on where a router sits, e.g. `layer_1/ffn`; null = every one).

| term | per layer | balanced | collapsed (k = 1) |
|---|---|---|---|
| balance (Switch Transformer) | E * sum_i f_i P_i | k (its minimum) | E |
| z_loss (ST-MoE) | mean over tokens of logsumexp(logits)^2 | - | - |

f_i is the number of assignments the router made to expert i (all k choices, dropped ones too) over the number of
tokens, so sum_i f_i = k; it has no gradient, P_i (the mean router probability of expert i) carries it.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from core.output import NetOutput
from nets.parts.moe import assignment_counts
from regularizers.base import Regularizer
from regularizers.routing import check_where, select


def expert_balance(probs: Tensor, expert_index: Tensor) -> Tensor:
    """probs (..., E), expert_index (..., k) -> E * sum_i f_i P_i (0-dim)."""
    probs = rearrange(probs, "... e -> (...) e").float()
    n_tokens, n_experts = probs.shape
    counts = assignment_counts(expert_index, n_experts)  # (E,), on the device, also under vmap
    fraction = counts.to(probs.dtype) / n_tokens  # f_i, sums to k
    return n_experts * (fraction * probs.mean(0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """logits (..., E) -> mean over tokens of logsumexp(logits)^2 (0-dim)."""
    return logits.float().logsumexp(dim=-1).square().mean()


class MoERegularizer(Regularizer):
    """Mean over the selected MoE layers of `layer_term`; a layer is a place with an `expert_index` aux tensor (a
    routed FFN's router has routing weights but no choices, and is not one)."""

    name = "moe"

    def __init__(self, weight: float, where: str | None = None):
        super().__init__(weight)
        check_where(where)
        self.where = where

    def layer_term(self, output: NetOutput, place: str) -> Tensor:
        raise NotImplementedError

    def term(self, output: NetOutput) -> Tensor:
        places = list(select(output, "expert_index", self.where))
        if not places:
            there = ", ".join(select(output, "expert_index", None)) or "none"
            raise ValueError(f"the '{self.name}' regulariser's where={self.where!r} selects no MoE layer; "
                             f"MoE layers sit at: {there}")
        return torch.stack([self.layer_term(output, place) for place in places]).mean()


def at(output: NetOutput, place: str, name: str) -> Tensor:
    return output.aux[f"{place}/{name}" if place else name]


class ExpertBalance(MoERegularizer):
    """Switch load balance E * sum_i f_i P_i per layer: k under uniform router probabilities with balanced
    assignments (its minimum), E when every token goes to one expert with probability 1 (k = 1)."""

    name = "balance"

    def layer_term(self, output: NetOutput, place: str) -> Tensor:
        return expert_balance(at(output, place, "routing"), at(output, place, "expert_index"))


class RouterZLoss(MoERegularizer):
    """ST-MoE's router z-loss, mean over tokens of logsumexp(logits)^2 per layer: keeps the router's logits small,
    where its softmax stays well conditioned in low precision."""

    name = "z_loss"

    def layer_term(self, output: NetOutput, place: str) -> Tensor:
        return router_z_loss(at(output, place, "router_logits"))

"""Routing regularisers: each reads `NetOutput.routing` (per layer, weights (..., N) summing to 1 over N heads)
and returns the mean over layers of a per-layer term. All are minimised, and all but load balancing push
routing towards decisive (one-hot) choices; each is 0 for one-hot routing.

| term | per-token definition | uniform over N heads | one-hot |
|---|---|---|---|
| entropy | -sum_i w_i log w_i | log N | 0 |
| sparsity | ||w||_1 / ||w||_2 - 1 (L1/L2 concentration) | sqrt(N) - 1 | 0 |
| gini | (N-1)/N - Gini(w), Gini(w) = sum_ij |w_i - w_j| / (2 N sum_i w_i) | (N-1)/N | 0 |

load_balance (Switch Transformer, Fedus et al. 2021) is over the batch, not per token: N * sum_i f_i P_i with f_i
the fraction of tokens whose top choice is head i and P_i the mean weight of head i; it is 1 when usage is
balanced and N when every token takes the same head, so it counters collapse rather than indecision.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from lightning_modules.regularizers import Regularizer
from nets.output import NetOutput
from runtime.errors import require


def entropy(w: Tensor) -> Tensor:
    return -(w * w.clamp_min(1e-12).log()).sum(-1)


def sparsity(w: Tensor) -> Tensor:
    return w.abs().sum(-1) / w.norm(dim=-1).clamp_min(1e-12) - 1


def gini_gap(w: Tensor) -> Tensor:
    n = w.shape[-1]
    pairwise = (w[..., :, None] - w[..., None, :]).abs().sum((-1, -2))
    gini = pairwise / (2 * n * w.sum(-1).clamp_min(1e-12))
    return (n - 1) / n - gini


def load_balance(w: Tensor) -> Tensor:
    flat = rearrange(w, "... n -> (...) n")
    n = flat.shape[-1]
    fraction = torch.nn.functional.one_hot(flat.argmax(-1), n).float().mean(0)  # f_i, no gradient
    return n * (fraction * flat.mean(0)).sum()


class RoutingRegularizer(Regularizer):
    """Mean over layers of `per_token(weights)` averaged over tokens (`load_balance` is already a batch term)."""

    TERMS = {"entropy": entropy, "sparsity": sparsity, "gini": gini_gap, "load_balance": load_balance}

    def __init__(self, kind: str, weight: float):
        super().__init__(weight)
        require(kind in self.TERMS, "kind", kind, ", ".join(self.TERMS))
        self.kind, self.fn = kind, self.TERMS[kind]

    def term(self, output: NetOutput) -> Tensor:
        if not output.routing:
            raise ValueError(f"the '{self.kind}' routing regulariser needs a net that returns routing weights")
        return torch.stack([self.fn(w).mean() for w in output.routing]).mean()

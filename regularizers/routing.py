"""Routing regularisers: each reads the routing weights of a net's output (aux tensors `.../routing`, weights
(..., N) summing to 1 over N heads, one per router) and returns the mean over routers of a per-router term. All
are minimised, and all but load balancing push routing towards decisive (one-hot) choices; each is 0 for one-hot
routing.

`where` picks the routers: by default (null) every one, as for a net with one router per layer. Otherwise it is
a glob (fnmatch: `*` also matches `/`, `[01]` one character of a set) on where a router sits, its aux key without
the `/routing` ending, and it selects the router when it matches that place or one that contains it:
`layer_1/ffn` is layer 1's FFN router in a transformer, `layer_1` everything in layer 1 (a routed MLP's router
there), `layer_[01]/*` layers 0 and 1. A `where` that selects nothing is an error at the first step, naming the
routers there are.

| term | per-token definition | uniform over N heads | one-hot |
|---|---|---|---|
| entropy | -sum_i w_i log w_i | log N | 0 |
| sparsity | ||w||_1 / ||w||_2 - 1 (L1/L2 concentration) | sqrt(N) - 1 | 0 |
| gini | (N-1)/N - Gini(w), Gini(w) = sum_ij |w_i - w_j| / (2 N sum_i w_i) | (N-1)/N | 0 |

load_balance (Switch Transformer, Fedus et al. 2021) is over the batch, not per token: N * sum_i f_i P_i with f_i
the fraction of tokens whose top choice is head i and P_i the mean weight of head i; it is 1 when usage is
balanced and N when every token takes the same head, so it counters collapse rather than indecision.

consistency (the routed-transformer study's open question 4) is across routers, not per router: an example's
routing should agree from one layer to the next, so that head i of every layer is one path through the net (the
least-action study's routing state is "which path did we take so far"). Per token, the mean over adjacent pairs of
selected routers (l, l+1) of the total variation distance TV(w_l, w_{l+1}) = 1/2 sum_i |w_l,i - w_{l+1},i|, then
the mean over tokens: 0 when every layer routes a token alike (uniform everywhere included: it does not ask for
decisive routing, so pair it with a decisiveness term), (N-1)/N between uniform and one-hot routing, 1 between
one-hot choices of different heads. The cross-layer coupling of Hu, Cao, Kong, Sun and Yuan ("Synergistic Intra-
and Cross-Layer Regularization Losses for MoE Expert Specialization", PMLR vol. 306) asks the same of adjacent MoE
layers, coherent expert pathways through depth, through their joint top-k routing probabilities; this is its soft,
all-heads form. It needs two routers or more, of one shape (a transformer's FFN routers, a routed MLP's layers).
"""
from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from einops import rearrange
from torch import Tensor

from core.errors import require
from core.output import NetOutput
from regularizers.base import Regularizer


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


def consistency(layers: list[Tensor]) -> Tensor:
    """Mean over tokens and adjacent pairs of `layers` (routing weights of one shape, in layer order) of the total
    variation distance between the two layers' routing of a token."""
    pairs = [0.5 * (w - v).abs().sum(-1).mean() for w, v in zip(layers, layers[1:])]
    return torch.stack(pairs).mean()


def aux_place(key: str, name: str = "routing") -> str:
    """Where the aux tensor `key`, called `name`, comes from: `layer_1/ffn` for `layer_1/ffn/routing`."""
    return key.removesuffix(name).removesuffix("/")


def router_place(key: str) -> str:
    """Where the router of the aux tensor `key` sits: `layer_1/ffn` for `layer_1/ffn/routing`."""
    return aux_place(key, "routing")


def selects(where: str, place: str) -> bool:
    """`where` (a glob) matches `place` or a place containing it (`layer_1` contains `layer_1/ffn`)."""
    parts = place.split("/")
    return any(fnmatchcase("/".join(parts[:n]), where) for n in range(1, len(parts) + 1))


def check_where(where: str | None) -> None:
    require(where is None or (isinstance(where, str) and where.strip("/") != ""), "where", where,
            "null (every router) or a glob on where routers sit, e.g. layer_1/ffn")


def select(output: NetOutput, name: str, where: str | None) -> dict[str, Tensor]:
    """The aux tensors called `name` (`routing`, `router_logits`, ...) at the places `where` selects (null: every
    one), keyed by place (`layer_1/ffn`), in layer order: the selection every router regulariser makes."""
    found = {aux_place(key, name): t for key, t in output.named(name).items()}
    return found if where is None else {place: t for place, t in found.items() if selects(where, place)}


class RoutingRegularizer(Regularizer):
    """Mean over the selected routers of `per_token(weights)` averaged over tokens (`load_balance` is already a
    batch term), or for `consistency` a term across them; `where` selects the routers (module docstring), null =
    every one."""

    TERMS = {"entropy": entropy, "sparsity": sparsity, "gini": gini_gap, "load_balance": load_balance}
    ACROSS_ROUTERS = {"consistency": consistency}

    def __init__(self, kind: str, weight: float, where: str | None = None):
        super().__init__(weight)
        kinds = {**self.TERMS, **self.ACROSS_ROUTERS}
        require(kind in kinds, "kind", kind, ", ".join(kinds))
        check_where(where)
        self.kind, self.fn, self.where = kind, kinds[kind], where

    def routers(self, output: NetOutput) -> list[Tensor]:
        """The routing weights this regulariser reads, in layer order."""
        return list(select(output, "routing", self.where).values())

    def term(self, output: NetOutput) -> Tensor:
        if not output.routing:
            raise ValueError(f"the '{self.kind}' routing regulariser needs a net that returns routing weights")
        selected = self.routers(output)
        if not selected:
            places = ", ".join(router_place(key) for key in output.named("routing"))
            raise ValueError(f"the '{self.kind}' routing regulariser's where={self.where!r} selects no router; "
                             f"routers sit at: {places}")
        if self.kind in self.ACROSS_ROUTERS:
            shapes = {tuple(w.shape) for w in selected}
            if len(selected) < 2 or len(shapes) > 1:
                places = ", ".join(select(output, "routing", self.where))
                raise ValueError(f"the '{self.kind}' routing regulariser compares routers layer to layer: it needs "
                                 f"two or more of one shape, and selects {places} (shapes {sorted(shapes)})")
            return self.fn(selected)
        return torch.stack([self.fn(w).mean() for w in selected]).mean()

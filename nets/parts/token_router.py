"""A per-token hard router: each token picks one of `n_options` mechanisms, `n_routes` times (one decision per routed
layer when one router serves several; n_routes = 1 for a router of its own layer).

    logits = W x                                   (B, T, n_routes, n_options), no bias
    train:  weights = gumbel_softmax(logits, tau, hard=True)   one-hot forward, gradient of the soft sample
    eval:   weights = one_hot(argmax logits)                   deterministic, no noise

The hard sample is what lets a routed layer skip the mechanism a token did not choose (nets/parts/routed_mixer.py, sparse
mode); the straight-through gradient (that of softmax((logits + gumbel) / tau)) is what trains the router from the
task loss. `temperature` (tau) is an attribute so that an annealing callback (callbacks/interventions/temperature.py) can lower it
during training: low tau makes the soft sample, and so the gradient estimate, closer to the hard choice.

Balance and entropy are measured on the noise-free probabilities softmax(logits), not on the samples. The router
runs in float32 (at least) with autocast off, as the MoE router (nets/parts/moe.py): its softmax is what rounding hurts.

Init: W ~ N(0, 0.02^2) (a net's own init draws it again with its init_std), so logits start near 0 and the routing
near 50/50 with small per-token differences: training samples both options about equally, and eval's argmax
already splits tokens instead of sending every tie to option 0 (which an all-zero W would do).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from core.errors import require
from nets.parts.flops import linear_flops


class Routing(NamedTuple):
    """A router's decisions; leading shape (B, T, n_routes)."""

    weights: Tensor  # (..., n_options) one-hot, with the straight-through gradient in training
    probs: Tensor    # (..., n_options) softmax(logits), sums to 1
    choice: Tensor   # (...,) int64, the chosen option
    logits: Tensor   # (..., n_options)

    def route(self, j: int) -> Routing:
        """The decisions of route j alone (leading shape (B, T))."""
        return Routing(*(t[:, :, j] for t in self))


class TokenRouter(nn.Module):
    """Linear router d_model -> n_routes x n_options with hard Gumbel-softmax decisions (see the module docstring)."""

    def __init__(self, d_model: int, n_routes: int = 1, n_options: int = 2, temperature: float = 1.0):
        super().__init__()
        require(isinstance(n_routes, int) and n_routes >= 1, "n_routes", n_routes, "an integer >= 1")
        require(isinstance(n_options, int) and n_options >= 2, "n_options", n_options, "an integer >= 2")
        self.n_routes, self.n_options = n_routes, n_options
        self.temperature = temperature
        self.proj = nn.Linear(d_model, n_routes * n_options, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        require(isinstance(value, (int, float)) and value > 0, "temperature", value, "a positive number")
        self._temperature = float(value)

    def forward(self, x: Tensor) -> Routing:
        """x (B, T, D) -> Routing with leading shape (B, T, n_routes)."""
        acc = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.to(acc), self.proj.weight.to(acc))
        logits = rearrange(logits, "b t (r o) -> b t r o", o=self.n_options)
        probs = logits.softmax(dim=-1)
        if self.training:
            weights = F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)
            choice = weights.argmax(dim=-1)
        else:
            choice = logits.argmax(dim=-1)
            hard = torch.zeros_like(logits).scatter_(-1, choice.unsqueeze(-1), 1.0)
            weights = hard + (probs - probs.detach())  # exactly one-hot; the gradient of probs (no noise)
        return Routing(weights, probs, choice, logits)

    def forward_flops(self, seq_len: int) -> int:
        """Matrix-product FLOPs on one sequence (nets/parts/flops.py): the logits at every position."""
        return linear_flops(self.proj, seq_len)

    def no_weight_decay(self) -> set[str]:
        """The router's weight: decay pulls its logits to zero and the routing to 50/50 (as MoEFFN's router)."""
        return {"proj.weight"}


__all__ = ["Routing", "TokenRouter"]

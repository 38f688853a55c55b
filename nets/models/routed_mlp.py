"""Routed MLP with a routing state (the least-action study's RoutedNetwork).

    x_0 = W_in onehot(a, b)                  residual stream (B, D)
    s_0 = RouteInit(x_0)                     routing state (B, S): "which path did we take so far"
    per layer l = 1..L:
        w_l = softmax(W_gate GELU(W_state s_{l-1} + W_residual x_{l-1}))      (B, N), sums to 1
        out_l = sum_i w_l[i] head_i(x_{l-1})                                    head_i: D -> hidden -> D
        x_l = x_{l-1} + out_l
        s_l = W_update [s_{l-1}; out_l]
    logits = W_out x_L

Routing is soft (all heads contribute) and input-dependent; w_l is the aux tensor `layer_<l-1>/routing`. The
routing parameters (RouteInit, W_state, W_residual, W_gate, W_update) are declared no-weight-decay, as the seeds
require.
"""
from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor, nn

from core.errors import require
from core.output import NetOutput
from nets.parts.parallel_heads import ParallelMLPHeads


class RoutedLayer(nn.Module):
    def __init__(self, d_model: int, d_hidden: int, state_dim: int, n_heads: int):
        super().__init__()
        self.state_proj = nn.Linear(state_dim, d_model)
        self.residual_proj = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, n_heads)
        self.update = nn.Linear(state_dim + d_model, state_dim)
        self.heads = ParallelMLPHeads(n_heads, d_model, d_hidden)
        self.act = nn.GELU()

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        weights = self.gate(self.act(self.state_proj(state) + self.residual_proj(x))).softmax(-1)  # (B, N)
        out = einsum(weights, self.heads(x), "b n, b n d -> b d")
        return x + out, self.update(torch.cat([state, out], dim=-1)), weights


class RoutedMLP(nn.Module):
    input_kind = "onehot"
    ROUTING_PARTS = ("route_init", "state_proj", "residual_proj", "gate", "update")

    def __init__(self, in_features: int, num_classes: int, d_model: int = 128, d_hidden: int = 128,
                 state_dim: int = 32, n_layers: int = 4, n_heads: int = 4):
        super().__init__()
        for key, value, low in (("d_model", d_model, 1), ("d_hidden", d_hidden, 1), ("state_dim", state_dim, 1),
                                ("n_layers", n_layers, 1), ("n_heads", n_heads, 2)):
            require(isinstance(value, int) and value >= low, key, value, f"an integer >= {low}")
        self.embed = nn.Linear(in_features, d_model)
        self.route_init = nn.Linear(d_model, state_dim)
        self.layers = nn.ModuleList(RoutedLayer(d_model, d_hidden, state_dim, n_heads) for _ in range(n_layers))
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> NetOutput:
        x = self.embed(x)
        state = self.route_init(x)
        aux = {}
        for i, layer in enumerate(self.layers):
            x, state, aux[f"layer_{i}/routing"] = layer(x, state)
        return NetOutput(logits=self.head(x), aux=aux)

    def input_embedding(self) -> Tensor:
        """(in_features, d_model): row i is the embedding of one-hot input i (bias left out)."""
        return self.embed.weight.T

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.split(".")[-2] in self.ROUTING_PARTS}

"""Feed-forward parts of a transformer block: position-wise maps d_model -> d_model.

An FFN is built as `ffn(d_model=...)` by the transformer (its other settings come from the config, as a
`_partial_` factory) and maps x (..., D) -> (y (..., D), aux), where aux holds its auxiliary tensors under short
names (`routing`), which the block files under `layer_<i>/ffn/`. A part may declare parameters exempt from
weight decay with `no_weight_decay()` (names relative to itself). `d_hidden` null means 4 * d_model throughout.

- `MLPFFN`: down(act(up(x))), the classic transformer FFN.
- `GLUFFN`: down(act(gate(x)) * up(x)), a gated linear unit (Shazeer 2020, "GLU Variants Improve Transformer":
  gelu gives GEGLU, silu SwiGLU, relu ReGLU). At the same d_hidden it has 1.5x the MLP's weights; `match="dense"`
  reads d_hidden as the dense MLP's width and takes the width that matches its parameter count (nets/parts/matching.py).
- `RoutedFFN`: N parallel MLP heads mixed per token by a softmax gate, out = sum_i w_i FFN_i(x), w (..., N).
  `gate="linear"`: w = softmax(W_gate x), on the token's residual stream alone. `gate="stateful"`: the gate also
  reads a routing state s that runs through the layers with the token (the least-action study's RoutedNetwork,
  whose parameter names the routed-transformer study's no-decay list `gate`, `state_proj`, `input_proj` implies):
      w_l = softmax(W_gate GELU(W_state s_{l-1} + W_input x_l)),    s_l = W_update [s_{l-1}; out_l]
  with s_0 = 0 before the first routed layer (the least-action study starts it from the embedding, RouteInit(x_0);
  here the first layer's input_proj reads the token already). The transformer hands each block's new state to the
  next (`takes_state`). The gate's parameters (W_gate, and for `stateful` W_state, W_input, W_update, the state's
  own projection) are declared no-weight-decay: decay pulls them to zero, the softmax to uniform, and no head can
  specialise (the routed-transformer study's finding 4); `optimizer.decay.declared=true` puts them back under decay.
"""
from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor, nn

from core.errors import require
from nets.parts.activations import make_activation
from nets.parts.flops import linear_flops
from nets.parts.matching import ffn_parameter_count, matched_hidden
from nets.parts.parallel_heads import ParallelMLPHeads


def hidden_width(d_model: int, d_hidden: int | None) -> int:
    require(d_hidden is None or (isinstance(d_hidden, int) and d_hidden >= 1), "d_hidden", d_hidden,
            "a positive integer, or null for 4 * d_model", related=["d_model"])
    return 4 * d_model if d_hidden is None else d_hidden


class MLPFFN(nn.Module):
    def __init__(self, d_model: int, d_hidden: int | None = None, activation: str = "gelu", bias: bool = True):
        super().__init__()
        d_hidden = hidden_width(d_model, d_hidden)
        self.up = nn.Linear(d_model, d_hidden, bias=bias)
        self.act = make_activation(activation)
        self.down = nn.Linear(d_hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.down(self.act(self.up(x))), {}

    def forward_flops(self, seq_len: int) -> int:
        """Matrix-product FLOPs on one sequence (nets/parts/flops.py): up and down at every position."""
        return linear_flops(self.up, seq_len) + linear_flops(self.down, seq_len)


class GLUFFN(nn.Module):
    """`match`: null uses d_hidden as given; `dense` takes d_hidden as the dense MLP FFN's width to match."""

    MATCHES = (None, "dense")

    def __init__(self, d_model: int, d_hidden: int | None = None, activation: str = "gelu", bias: bool = True,
                 match: str | None = None):
        super().__init__()
        require(match in self.MATCHES, "match", match, "null (d_hidden as given) or dense (d_hidden is the dense "
                "MLP's width, matched in parameters)")
        d_hidden = hidden_width(d_model, d_hidden)
        # what it was matched to, for the parameter report at start: (description, that dense FFN's parameters)
        self.matched_to = None if match is None else (f"the dense MLP of hidden {d_hidden}",
                                                      ffn_parameter_count("mlp", d_model, d_hidden, bias))
        if match == "dense":
            d_hidden = matched_hidden("glu", d_model, d_hidden, bias)
        self.gate = nn.Linear(d_model, d_hidden, bias=bias)
        self.up = nn.Linear(d_model, d_hidden, bias=bias)
        self.act = make_activation(activation)
        self.down = nn.Linear(d_hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.down(self.act(self.gate(x)) * self.up(x)), {}

    def forward_flops(self, seq_len: int) -> int:
        """Matrix-product FLOPs on one sequence (nets/parts/flops.py): gate, up and down at every position."""
        return sum(linear_flops(layer, seq_len) for layer in (self.gate, self.up, self.down))


class RoutedFFN(nn.Module):
    """`gate`: `linear` (reads x) or `stateful` (reads x and the routing state, `state_dim` wide; module docstring).
    With `stateful`, forward takes the previous layer's `state` (None: the first layer, s = 0) and returns the new
    one as aux `state`."""

    GATES = ("linear", "stateful")

    def __init__(self, d_model: int, n_heads: int = 4, d_hidden: int | None = None, activation: str = "gelu",
                 bias: bool = True, gate: str = "linear", state_dim: int = 32):
        super().__init__()
        require(isinstance(n_heads, int) and n_heads >= 2, "n_heads", n_heads, "an integer >= 2")
        require(gate in self.GATES, "gate", gate, "linear (softmax of a linear map of x) or stateful (x and a "
                "routing state through the layers)")
        require(isinstance(state_dim, int) and state_dim >= 1, "state_dim", state_dim, "an integer >= 1",
                related=["gate"])
        # the order of construction draws the random numbers of the RoutedTransformer this replaces: heads, gate
        self.heads = ParallelMLPHeads(n_heads, d_model, hidden_width(d_model, d_hidden), activation, bias)
        self.takes_state = gate == "stateful"
        if self.takes_state:
            self.state_dim = state_dim
            self.state_proj = nn.Linear(state_dim, d_model)
            self.input_proj = nn.Linear(d_model, d_model)
            self.act = nn.GELU()
            self.state_update = nn.Linear(state_dim + d_model, state_dim)
        self.gate = nn.Linear(d_model, n_heads)  # always with a bias: `bias` is the heads'

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.takes_state:
            weights = self.gate(x).softmax(dim=-1)  # (..., N), sums to 1 over heads
            return einsum(weights, self.heads(x), "... n, ... n d -> ... d"), {"routing": weights}
        if state is None:
            state = x.new_zeros(*x.shape[:-1], self.state_dim)
        weights = self.gate(self.act(self.state_proj(state) + self.input_proj(x))).softmax(dim=-1)
        out = einsum(weights, self.heads(x), "... n, ... n d -> ... d")
        return out, {"routing": weights, "state": self.state_update(torch.cat([state, out], dim=-1))}

    def no_weight_decay(self) -> set[str]:
        parts = ("gate", "state_proj", "input_proj", "state_update") if self.takes_state else ("gate",)
        return {f"{part}.{kind}" for part in parts for kind in ("weight", "bias")}


__all__ = ["GLUFFN", "MLPFFN", "RoutedFFN"]

"""Feed-forward parts of a transformer block: position-wise maps d_model -> d_model.

An FFN is built as `ffn(d_model=...)` by the transformer (its other settings come from the config, as a
`_partial_` factory) and maps x (..., D) -> (y (..., D), aux), where aux holds its auxiliary tensors under short
names (`routing`), which the block files under `layer_<i>/ffn/`. A part may declare parameters exempt from
weight decay with `no_weight_decay()` (names relative to itself). `d_hidden` null means 4 * d_model throughout.

- `MLPFFN`: down(act(up(x))), the classic transformer FFN.
- `GLUFFN`: down(act(gate(x)) * up(x)), a gated linear unit (Shazeer 2020, "GLU Variants Improve Transformer":
  gelu gives GEGLU, silu SwiGLU, relu ReGLU). At the same d_hidden it has 1.5x the MLP's weights; `match="dense"`
  reads d_hidden as the dense MLP's width and takes the width that matches its parameter count (nets/parts/matching.py).
- `RoutedFFN`: N parallel MLP heads mixed per token by a softmax gate on the token's residual stream,
  w = softmax(W_gate x) (..., N), out = sum_i w_i FFN_i(x). The gate (weight and bias) is declared
  no-weight-decay: decay pulls it to zero, the softmax to uniform, and no head can specialise (the routed-
  transformer study's finding 4); `optimizer.decay.declared=true` puts it back under decay.
"""
from __future__ import annotations

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
    def __init__(self, d_model: int, n_heads: int = 4, d_hidden: int | None = None, activation: str = "gelu",
                 bias: bool = True):
        super().__init__()
        require(isinstance(n_heads, int) and n_heads >= 2, "n_heads", n_heads, "an integer >= 2")
        # the order of construction draws the random numbers of the RoutedTransformer this replaces: heads, gate
        self.heads = ParallelMLPHeads(n_heads, d_model, hidden_width(d_model, d_hidden), activation, bias)
        self.gate = nn.Linear(d_model, n_heads)  # always with a bias: `bias` is the heads'

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        weights = self.gate(x).softmax(dim=-1)  # (..., N), sums to 1 over heads
        return einsum(weights, self.heads(x), "... n, ... n d -> ... d"), {"routing": weights}

    def no_weight_decay(self) -> set[str]:
        return {"gate.weight", "gate.bias"}


__all__ = ["GLUFFN", "MLPFFN", "RoutedFFN"]

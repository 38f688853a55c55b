"""N independent MLP heads (d_in -> d_hidden -> d_in) run as one batched matmul, for routed nets."""
from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor, nn

from nets.parts.activations import make_activation


class ParallelMLPHeads(nn.Module):
    """x (..., d) -> every head's output (..., n_heads, d). Weights are stored (heads, in, out)."""

    # Stated so the optimiser's weight-decay rules see the per-head offsets as biases (they are not named `bias`).
    parameter_roles = {"up": "weight", "down": "weight", "up_bias": "bias", "down_bias": "bias"}

    def __init__(self, n_heads: int, d_model: int, d_hidden: int, activation: str = "gelu", bias: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.up = nn.Parameter(torch.randn(n_heads, d_model, d_hidden) / d_model**0.5)
        self.down = nn.Parameter(torch.randn(n_heads, d_hidden, d_model) / d_hidden**0.5)
        self.up_bias = nn.Parameter(torch.zeros(n_heads, d_hidden)) if bias else None
        self.down_bias = nn.Parameter(torch.zeros(n_heads, d_model)) if bias else None
        self.act = make_activation(activation)

    def init_normal_(self, std: float) -> None:
        """Redraw the weight matrices from N(0, std^2), up then down (what a transformer's init does to its
        linears; the biases stay as they are, zero)."""
        nn.init.normal_(self.up, std=std)
        nn.init.normal_(self.down, std=std)

    def forward(self, x: Tensor) -> Tensor:
        h = einsum(x, self.up, "... d, n d m -> ... n m")
        if self.up_bias is not None:
            h = h + self.up_bias
        y = einsum(self.act(h), self.down, "... n m, n m d -> ... n d")
        return y if self.down_bias is None else y + self.down_bias

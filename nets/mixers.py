"""Token mixers: the part of a transformer block that moves information between positions.

A mixer is built as `mixer(d_model=...)` by the transformer (its other settings come from the config, as a
`_partial_` factory) and maps x (B, T, D) -> (y (B, T, D), aux), where aux holds its auxiliary tensors under short
names (`attention`), which the block files under `layer_<i>/mixer/`. `return_attention=True` asks for the
attention probabilities; a mixer without any ignores it. Shapes: B batch, T positions, D d_model, H heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from nets.settings import require


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax self-attention: one fused qkv projection, an output projection.

    Runs the fused SDPA kernel; with `return_attention` it computes the same attention explicitly, to return the
    probabilities (B, H, T, T) as aux `attention`."""

    def __init__(self, d_model: int, n_heads: int = 4, bias: bool = True):
        super().__init__()
        require(isinstance(n_heads, int) and n_heads >= 1, "n_heads", n_heads, "an integer >= 1")
        require(d_model % n_heads == 0, "n_heads", n_heads, f"a divisor of d_model={d_model}", related=["d_model"])
        require(bias in (True, False), "bias", bias, "true or false")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        aux = {}
        if return_attention:
            t = x.shape[1]
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            aux["attention"] = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (B, H, T, T)
            y = aux["attention"] @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(rearrange(y, "b h t d -> b t (h d)")), aux


__all__ = ["SoftmaxAttention"]

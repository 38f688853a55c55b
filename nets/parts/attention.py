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

from core.errors import require
from nets.kernels.rotary import apply_rotary
from nets.parts.short_conv import ShortConvolution


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax self-attention: one fused qkv projection, an output projection.

    Runs the fused SDPA kernel; with `return_attention` it computes the same attention explicitly, to return the
    probabilities (B, H, T, T) as aux `attention`. `rotary`: rotate q and k by their positions (nets/kernels/rotary.py)
    before the scores; it has no parameters, so nets built without it draw the same weights in the same order.
    `conv_size` > 0: a causal depthwise short convolution with SiLU on q, k and v (nets/parts/short_conv.py), as Gated
    DeltaNet has, so that a key can carry the token before it (one layer then does an associative lookup that would
    otherwise take two); 0 (the default) adds nothing and draws nothing.

    `attend_at` computes the attention of selected query positions only (the sparse mode of a routed mixer,
    nets/parts/routed_mixer.py): keys and values of every position, queries and the output projection of the selected
    rows only."""

    def __init__(self, d_model: int, n_heads: int = 4, bias: bool = True, rotary: bool = False, conv_size: int = 0):
        super().__init__()
        require(isinstance(n_heads, int) and n_heads >= 1, "n_heads", n_heads, "an integer >= 1")
        require(d_model % n_heads == 0, "n_heads", n_heads, f"a divisor of d_model={d_model}", related=["d_model"])
        require(bias in (True, False), "bias", bias, "true or false")
        require(rotary in (True, False), "rotary", rotary, "true or false")
        require(not rotary or (d_model // n_heads) % 2 == 0, "rotary", rotary,
                f"false with an odd head width d_model / n_heads = {d_model // n_heads} (rotary turns channel pairs)",
                related=["d_model", "n_heads"])
        require(isinstance(conv_size, int) and not isinstance(conv_size, bool) and conv_size >= 0, "conv_size",
                conv_size, "an integer >= 0 (0: no short convolution)")
        self.n_heads, self.d_model, self.rotary = n_heads, d_model, rotary
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.conv = ShortConvolution(3 * d_model, conv_size) if conv_size else None  # depthwise: q, k, v each their own

    def project(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> q, k, v side by side (B, T, 3D), after the short convolution when there is one."""
        qkv = self.qkv(x)
        return qkv if self.conv is None else self.conv(qkv)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        q, k, v = rearrange(self.project(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        if self.rotary:
            positions = torch.arange(x.shape[1], device=x.device)
            q, k = apply_rotary(q, positions), apply_rotary(k, positions)
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

    def attend_at(self, x: Tensor, query_positions: Tensor, query_valid: Tensor) -> Tensor:
        """x (B, T, D), query_positions (B, Q) int64, query_valid (B, Q) bool -> the outputs at those positions
        (B, Q, D): row (b, j) equals forward(x)[0][b, query_positions[b, j]] up to rounding.

        Causal by original position (key s is seen by the query at position t when s <= t), hence an explicit
        boolean mask (is_causal would mean s <= j). A padded slot (query_valid false) is treated as position 0:
        it sees key 0 only, so it stays finite (no all-masked softmax row, no NaN); the caller discards it.
        With a short convolution a query depends on its neighbours too, so q is computed at every position and the
        selected rows gathered; without one only the selected rows are projected."""
        d = self.d_model
        positions = torch.where(query_valid, query_positions, torch.zeros_like(query_positions))
        at_queries = positions.unsqueeze(-1)  # (B, Q, 1)
        if self.conv is None:
            w, b = self.qkv.weight, self.qkv.bias
            kv = F.linear(x, w[d:], None if b is None else b[d:])  # (B, T, 2D): keys and values of every position
            rows = x.gather(1, at_queries.expand(-1, -1, d))  # (B, Q, D), the queries' inputs
            q = F.linear(rows, w[:d], None if b is None else b[:d])
        else:
            qkv = self.project(x)
            q, kv = qkv[..., :d].gather(1, at_queries.expand(-1, -1, d)), qkv[..., d:]
        k, v = rearrange(kv, "b t (two h e) -> two b h t e", two=2, h=self.n_heads)
        q = rearrange(q, "b q (h e) -> b h q e", h=self.n_heads)
        keys = torch.arange(x.shape[1], device=x.device)  # the keys' positions
        if self.rotary:
            q, k = apply_rotary(q, positions), apply_rotary(k, keys)
        mask = keys <= positions.unsqueeze(-1)  # (B, Q, T): True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))  # (B, H, Q, e)
        return self.proj(rearrange(y, "b h q e -> b q (h e)"))


__all__ = ["SoftmaxAttention"]

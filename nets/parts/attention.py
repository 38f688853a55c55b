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
from nets.parts.flops import linear_flops, matmul_flops
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
    rows only, and each block of queries against the keys up to its block's end only.
    `forward_flops` and `attend_at_flops` count the matrix products of each (nets/parts/flops.py)."""

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

    def attend_at(self, x: Tensor, query_positions: Tensor, block_size: int) -> Tensor:
        """x (B, T, D), query_positions (B, N, S) int64: S query positions in each of the N blocks of `block_size`
        positions (block n's in [n block_size, (n + 1) block_size), below T) -> the outputs at those positions
        (B, N, S, D): entry (b, n, j) equals forward(x)[0][b, query_positions[b, n, j]] up to rounding.

        Block n's queries attend only to the keys before the block's end, min((n + 1) block_size, T): over all
        blocks S x (block_size + 2 block_size + ... + T) pairs, about half of N S x T, as causal attention needs,
        instead of every query by every key. Within a block, causal by original position (key s is seen by the query
        at position t when s <= t): a boolean mask, since is_causal would mean s <= j. Every shape follows from T, N,
        S and block_size alone, never from the data; a position may be asked for twice.
        With a short convolution a query depends on its neighbours too, so q is computed at every position and the
        selected rows gathered; without one only the selected rows are projected."""
        d, (B, N, S) = self.d_model, query_positions.shape
        T = x.shape[1]
        positions = query_positions.reshape(B, N * S)
        at_queries = positions.unsqueeze(-1)  # (B, N S, 1)
        if self.conv is None:
            w, b = self.qkv.weight, self.qkv.bias
            kv = F.linear(x, w[d:], None if b is None else b[d:])  # (B, T, 2D): keys and values of every position
            rows = x.gather(1, at_queries.expand(-1, -1, d))  # (B, N S, D), the queries' inputs
            q = F.linear(rows, w[:d], None if b is None else b[:d])
        else:
            qkv = self.project(x)
            q, kv = qkv[..., :d].gather(1, at_queries.expand(-1, -1, d)), qkv[..., d:]
        k, v = rearrange(kv, "b t (two h e) -> two b h t e", two=2, h=self.n_heads)
        q = rearrange(q, "b q (h e) -> b h q e", h=self.n_heads)
        keys = torch.arange(T, device=x.device)  # the keys' positions
        if self.rotary:
            q, k = apply_rotary(q, positions), apply_rotary(k, keys)
        blocks = []
        for n in range(N):
            end, rows = min((n + 1) * block_size, T), slice(n * S, (n + 1) * S)
            mask = keys[:end] <= positions[:, rows].unsqueeze(-1)  # (B, S, end): True = may attend
            blocks.append(F.scaled_dot_product_attention(q[:, :, rows], k[:, :, :end], v[:, :, :end],
                                                         attn_mask=mask.unsqueeze(1)))  # (B, H, S, e)
        y = rearrange(torch.cat(blocks, dim=2), "b h q e -> b q (h e)")
        return self.proj(y).reshape(B, N, S, d)

    def forward_flops(self, seq_len: int) -> int:
        """Matrix-product FLOPs of `forward` on one sequence of seq_len positions: the projections, the short
        convolution, and scores and weighted values over every (query, key) pair, T by T: the causal half is
        counted in full, as torch's FLOP counter and the usual MFU accounting (PaLM's 6N + 12 L H Q T) count it."""
        T, d = seq_len, self.d_model
        return (linear_flops(self.qkv, T) + self.conv_flops(T) + attention_flops(T * T, d)
                + linear_flops(self.proj, T))

    def attend_at_flops(self, seq_len: int, block_size: int, slots: int) -> int:
        """Matrix-product FLOPs of `attend_at` on one sequence of seq_len positions with `slots` queries per block
        of `block_size` positions: keys and values at every position (queries too with a short convolution),
        queries and the output projection at the selected rows, each block's queries by the keys up to its end."""
        T, d = seq_len, self.d_model
        n_blocks = -(-T // block_size)
        rows = n_blocks * slots
        if self.conv is None:  # keys and values at every position, queries at the selected rows
            projections = matmul_flops(T, d, 2 * d) + matmul_flops(rows, d, d)
        else:
            projections = linear_flops(self.qkv, T) + self.conv_flops(T)
        pairs = sum(slots * min((n + 1) * block_size, T) for n in range(n_blocks))
        return projections + attention_flops(pairs, d) + linear_flops(self.proj, rows)

    def conv_flops(self, seq_len: int) -> int:
        return 0 if self.conv is None else self.conv.forward_flops(seq_len)


def attention_flops(pairs: int, d_model: int) -> int:
    """Scores q·k and the weighted sum of values over `pairs` (query, key) pairs: two products of width d_model
    (summed over heads), 2 FLOPs per multiply-add each."""
    return 4 * pairs * d_model


__all__ = ["SoftmaxAttention"]

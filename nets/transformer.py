"""Decoder-only transformer for token tasks: pre-LN, causal, learned positions, optional weight tying.

Covers the 4-layer model of the routed-transformer study and Nanda et al.'s 1-layer model
(`norm: none`, `activation: relu`, `attn_bias: false`, `init_scheme: nanda`). Shapes: B batch, T positions,
D d_model, H heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from nets.output import NetOutput
from runtime.errors import require


def make_norm(kind: str, d_model: int) -> nn.Module:
    return nn.LayerNorm(d_model) if kind == "layernorm" else nn.Identity()


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, bias: bool):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        if return_attention:
            t = x.shape[1]
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            attn = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (B, H, T, T)
            y = attn @ v
        else:
            attn = None
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(rearrange(y, "b h t d -> b t (h d)")), attn


class FeedForward(nn.Module):
    """d_model -> d_mlp -> d_model. Like every block FFN, returns (output, routing weights or None)."""

    def __init__(self, d_model: int, d_mlp: int, activation: str, bias: bool):
        super().__init__()
        self.up = nn.Linear(d_model, d_mlp, bias=bias)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.down = nn.Linear(d_mlp, d_model, bias=bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.down(self.act(self.up(x))), None


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + ffn(ln(x)). `ffn` is any d_model -> d_model module."""

    def __init__(self, d_model: int, n_heads: int, ffn: nn.Module, norm: str, bias: bool):
        super().__init__()
        self.ln_attn = make_norm(norm, d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, bias)
        self.ln_ffn = make_norm(norm, d_model)
        self.ffn = ffn

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """-> (residual stream, attention probabilities or None, routing weights or None)."""
        a, attn = self.attn(self.ln_attn(x), return_attention)
        x = x + a
        f, routing = self.ffn(self.ln_ffn(x))
        return x + f, attn, routing


INIT_SCHEMES = ("normal", "nanda")


class Transformer(nn.Module):
    """Token + position embeddings, `n_layers` pre-LN blocks, final norm, unembedding to `num_classes`.

    `num_classes` may differ from `vocab_size` (answer-only tasks predict residues only); weight tying needs
    them equal. `bias` sets the attention and FFN biases, `attn_bias` (None = `bias`) the attention's alone.
    `init_scheme`: `normal` draws every weight from N(0, init_std^2); `nanda` follows Nanda et al.'s code
    (progress-measures-paper, transformers.py), where the scale is set per matrix: N(0, 1/d_model) for every
    weight but the unembedding's N(0, 1/num_classes) (theirs is 1/(p+1): its = token is a class too), so
    `init_std` is then ignored. Biases start at zero in both.
    """

    input_kind = "tokens"

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        seq_len: int,
        n_layers: int = 4,
        n_heads: int = 4,
        d_model: int = 128,
        d_mlp: int | None = None,
        activation: str = "gelu",
        norm: str = "layernorm",
        bias: bool = True,
        tie_weights: bool = False,
        init_std: float = 0.02,
        attn_bias: bool | None = None,
        init_scheme: str = "normal",
    ):
        super().__init__()
        require(isinstance(n_layers, int) and n_layers >= 1, "n_layers", n_layers, "an integer >= 1")
        require(isinstance(n_heads, int) and n_heads >= 1, "n_heads", n_heads, "an integer >= 1")
        require(isinstance(d_model, int) and d_model >= 1, "d_model", d_model, "an integer >= 1")
        require(d_model % n_heads == 0, "n_heads", n_heads, f"a divisor of d_model={d_model}", related=["d_model"])
        require(activation in ("gelu", "relu"), "activation", activation, "gelu, relu")
        require(norm in ("layernorm", "none"), "norm", norm, "layernorm, none")
        require(not tie_weights or num_classes == vocab_size, "tie_weights", tie_weights,
                f"false when num_classes ({num_classes}) != vocab_size ({vocab_size})")
        require(init_std > 0, "init_std", init_std, "a positive number")
        require(attn_bias in (None, True, False), "attn_bias", attn_bias, "null (= bias), true or false")
        require(init_scheme in INIT_SCHEMES, "init_scheme", init_scheme, ", ".join(INIT_SCHEMES))
        d_mlp = d_mlp or 4 * d_model
        attn_bias = bias if attn_bias is None else attn_bias
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, self.make_ffn(d_model, d_mlp, activation, bias), norm, attn_bias)
            for _ in range(n_layers)
        )
        self.ln_final = make_norm(norm, d_model)
        self.unembed = nn.Linear(d_model, num_classes, bias=False)
        # subclasses draw their own weights with init_std, so under `nanda` it holds that scheme's 1/sqrt(d_model)
        self.init_std = d_model**-0.5 if init_scheme == "nanda" else init_std
        self.apply(self._init_weights)
        if init_scheme == "nanda":
            nn.init.normal_(self.unembed.weight, std=num_classes**-0.5)
        if tie_weights:
            self.unembed.weight = self.token_embedding.weight

    def make_ffn(self, d_model: int, d_mlp: int, activation: str, bias: bool) -> nn.Module:
        """The per-block FFN (returns (output, routing or None)); subclasses (routed transformers) replace it."""
        return FeedForward(d_model, d_mlp, activation, bias)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor, return_attention: bool = False) -> NetOutput:
        # tokens: (B, T) -> logits (B, T, num_classes)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        attention, routing = [], []
        for block in self.blocks:
            x, attn, weights = block(x, return_attention)
            if attn is not None:
                attention.append(attn)
            if weights is not None:
                routing.append(weights)
        return NetOutput(logits=self.unembed(self.ln_final(x)), attention=attention, routing=routing)

    def input_embedding(self) -> Tensor:
        """(vocab_size, d_model): the token embedding, row i for token id i."""
        return self.token_embedding.weight

    def no_weight_decay(self) -> set[str]:
        """Embeddings are covered by the generic rule; a tied unembedding shares their (no-decay) weight."""
        return set()

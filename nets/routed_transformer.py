"""Routed transformer (the routed-transformer study): each block's FFN is N parallel FFN heads mixed per token
by a softmax gate computed from the token's residual stream.

    w = softmax(W_gate x)                 (B, T, N), sums to 1 over heads
    out = sum_i w_i * FFN_i(x)            every head is d_model -> d_mlp -> d_model

The gate's weights are declared no-weight-decay: decay pulls them to zero, the softmax to uniform, and no head
can specialise (the study's finding 4). `optimizer.decay.declared=true` puts them back under decay.
"""
from __future__ import annotations

from einops import einsum
from torch import Tensor, nn

from nets.parallel_heads import ParallelMLPHeads
from nets.transformer import Transformer
from runtime.errors import require


class RoutedFFN(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, n_ffn_heads: int, activation: str, bias: bool):
        super().__init__()
        self.heads = ParallelMLPHeads(n_ffn_heads, d_model, d_mlp, activation, bias)
        self.gate = nn.Linear(d_model, n_ffn_heads)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.gate(x).softmax(dim=-1)  # (B, T, N)
        return einsum(weights, self.heads(x), "b t n, b t n d -> b t d"), weights


class RoutedTransformer(Transformer):
    """The baseline transformer with every block's FFN replaced by a `RoutedFFN` of `n_ffn_heads` heads."""

    def __init__(self, vocab_size: int, num_classes: int, seq_len: int, n_ffn_heads: int = 4, **kwargs):
        require(isinstance(n_ffn_heads, int) and n_ffn_heads >= 2, "n_ffn_heads", n_ffn_heads, "an integer >= 2")
        self._n_ffn_heads = n_ffn_heads
        super().__init__(vocab_size, num_classes, seq_len, **kwargs)

    def make_ffn(self, d_model: int, d_mlp: int, activation: str, bias: bool) -> nn.Module:
        return RoutedFFN(d_model, d_mlp, self._n_ffn_heads, activation, bias)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ParallelMLPHeads):
            nn.init.normal_(module.up, std=self.init_std)
            nn.init.normal_(module.down, std=self.init_std)

    def no_weight_decay(self) -> set[str]:
        """Routing gates (weight and bias) of every block."""
        return {name for name, _ in self.named_parameters() if ".ffn.gate." in name}


__all__ = ["RoutedFFN", "RoutedTransformer"]

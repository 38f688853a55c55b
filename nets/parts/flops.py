"""How the parts count their FLOPs, for model FLOPs utilisation (MFU): tokens/s x model FLOPs per token over the
device's peak (callbacks/run/throughput.py, bench/hybrid_routing.py).

A part that can count itself has `forward_flops(seq_len)`: the FLOPs of the matrix products of one forward over
one sequence of seq_len positions (2 per multiply-add: linear layers, convolutions, attention scores and values,
the chunked delta rule's products), computed from its shapes alone. Elementwise work (norms, activations,
softmax, rotary, decays) and triangular solves are left out, as MFU accounting leaves them out; that is also what
torch.utils.flop_counter.FlopCounterMode counts, which the tests check the counts against. A training step does
about three times a forward's FLOPs (the backward computes two products per forward product: the gradients of
both its operands): `TRAINING_PER_FORWARD`.
"""
from __future__ import annotations

from torch import nn

TRAINING_PER_FORWARD = 3


def matmul_flops(rows: int, inner: int, cols: int) -> int:
    """A (rows, inner) by (inner, cols) product."""
    return 2 * rows * inner * cols


def linear_flops(layer: nn.Linear, rows: int) -> int:
    """A linear layer applied to `rows` vectors (its bias is not counted, as the FLOP counter does not)."""
    return matmul_flops(rows, layer.in_features, layer.out_features)


def module_flops(module: nn.Module, seq_len: int) -> int | None:
    """A module's forward FLOPs on one sequence: a linear layer's, or the module's own `forward_flops`; None for a
    module that does not count itself (or says it cannot: a mixture of experts, whose work follows its routing)."""
    if isinstance(module, nn.Linear):
        return linear_flops(module, seq_len)
    count = getattr(module, "forward_flops", None)
    return count(seq_len) if callable(count) else None


def flops_per_token(net: nn.Module, seq_len: int, training: bool = True) -> float | None:
    """The net's model FLOPs per token at windows of seq_len positions: a training step's (3x the forward's) or
    a forward's; None for a net that does not count its FLOPs."""
    forward = module_flops(net, seq_len)
    if forward is None:
        return None
    return forward * (TRAINING_PER_FORWARD if training else 1) / seq_len


__all__ = ["TRAINING_PER_FORWARD", "flops_per_token", "linear_flops", "matmul_flops", "module_flops"]

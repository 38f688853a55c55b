"""Hidden widths that give an FFN the parameter count of a dense MLP FFN (the MoE-expressivity study compares FFN,
GLU and MoE at matched size).

Counts are linear in the hidden width h (d = d_model, b = 1 with biases, 0 without):

    MLP  down(act(up(x)))           2 d h + b (h + d)
    GLU  down(act(gate(x)) * up(x)) 3 d h + b (2 h + d)
    MoE  E experts + a router       E * expert(h_e) + E d   (the router is a bias-free linear d -> E)

so a match is the closed-form solution of count(h) = dense count, rounded to the nearest integer (the count is
linear in h, so that is also the integer width whose count is nearest). What each `match` means:

- `dense` (GLU): the GLU as large as the dense MLP, h = (2d + b) h_dense / (3d + 2b), about 2/3 h_dense.
- `dense_total` (MoE): all E experts plus the router as large as the dense MLP, about h_dense / E each.
- `dense_active` (MoE): each expert as large as the dense MLP (an MLP expert is the dense MLP's width itself), so
  a token meets as many expert weights as in the dense FFN when top_k = 1; top_k = 2 is twice that.
"""
from __future__ import annotations

from fractions import Fraction
from math import floor

from core.errors import require

EXPERTS = ("mlp", "glu")


def ffn_parameter_count(expert: str, d_model: int, d_hidden: int, bias: bool) -> int:
    """Parameters of one MLP or GLU FFN (nets/parts/ffns.py: MLPFFN, GLUFFN), by the formulas above."""
    require(expert in EXPERTS, "expert", expert, ", ".join(EXPERTS))
    slope, offset = per_hidden_unit(expert, d_model, bias), int(bias) * d_model
    return slope * d_hidden + offset


def per_hidden_unit(expert: str, d_model: int, bias: bool) -> int:
    """Parameters one more hidden unit adds: its rows and columns (2 or 3 of them) and their biases."""
    return (2 if expert == "mlp" else 3) * d_model + (1 if expert == "mlp" else 2) * int(bias)


def matched_hidden(expert: str, d_model: int, dense_hidden: int, bias: bool, n_experts: int = 1,
                   router: bool = False) -> int:
    """The hidden width h of each of `n_experts` FFNs of kind `expert` (mlp | glu) whose parameters together, plus
    a bias-free router d_model -> n_experts when `router`, count as many as one dense MLP FFN of width
    `dense_hidden` (same d_model, same `bias`). The nearest integer, at least 1."""
    require(expert in EXPERTS, "expert", expert, ", ".join(EXPERTS))
    require(isinstance(n_experts, int) and n_experts >= 1, "n_experts", n_experts, "an integer >= 1")
    dense = ffn_parameter_count("mlp", d_model, dense_hidden, bias)
    fixed = n_experts * int(bias) * d_model + (n_experts * d_model if router else 0)
    exact = Fraction(dense - fixed, n_experts * per_hidden_unit(expert, d_model, bias))
    return max(1, floor(exact + Fraction(1, 2)))  # half up, exactly (no float rounding at .5)


__all__ = ["EXPERTS", "ffn_parameter_count", "matched_hidden"]

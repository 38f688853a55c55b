"""A token mixer routed per token between Gated DeltaNet (linear attention) and softmax attention.

Takes x (B, T, D) and a router's decisions (nets/parts/token_router.py): `weights` (B, T, 2) one-hot with a
straight-through gradient and `choice` (B, T), 0 = gdn, 1 = softmax. Two ways to compute the same forward:

- dense (the research seed's): both mechanisms on every token, y = w_gdn * gdn(x) + w_softmax * attn(x). The
  routing saves nothing; the router's gradient flows through both outputs (d y / d w = each mechanism's output).
- sparse (saves the softmax queries): GDN still runs on every token: its recurrent state must see the whole
  sequence, and its cost is linear anyway. Softmax attention computes queries, scores and the output projection
  only for the tokens routed to it (SoftmaxAttention.attend_at; keys and values stay full: every earlier token is
  a key, whatever it chose). y = where(choice == softmax, w_softmax * attn_out, w_gdn * gdn_out). The forward
  equals dense's to rounding (the other weight is exactly 0); the router's gradient flows only through the chosen
  mechanism's output (Switch-style), since the other's output is never computed at that token.

Sparse gather, without a loop over rows: each row's softmax tokens are sorted to its front (a stable argsort keeps
them in position order), the first Q = the largest count in the batch are taken, and the slots past a row's count
are padding (position 0, discarded). Outputs come back by gathering slot rank(t) = (number of softmax tokens up to
t) - 1 for every token. Reading Q is the one host sync, and the shapes depend on the data: the sparse mixer says
`data_dependent_shapes` (as nets/parts/moe.py), so the framework refuses torch.func.vmap (ensembles) and CUDA graphs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from core.errors import require
from nets.parts.attention import SoftmaxAttention

ROUTING_MODES = ("dense", "sparse")
GDN, SOFTMAX = 0, 1  # the options, in the router's order


class RoutedMixer(nn.Module):
    """`gdn` (any mixer returning (y, aux)) and `attn` (a SoftmaxAttention) routed per token; `mode`: dense |
    sparse (see the module docstring). `return_attention` reaches the attention in dense mode only (sparse has no
    full attention matrix)."""

    data_dependent_shapes = False  # an instance in sparse mode sets True

    def __init__(self, gdn: nn.Module, attn: SoftmaxAttention, mode: str = "dense"):
        super().__init__()
        require(mode in ROUTING_MODES, "mode", mode, " | ".join(ROUTING_MODES))
        require(mode == "dense" or hasattr(attn, "attend_at"), "mode", mode,
                "dense with a mixer that cannot attend at selected queries", related=["attn"])
        self.gdn, self.attn, self.mode = gdn, attn, mode
        self.data_dependent_shapes = mode == "sparse"

    def forward(self, x: Tensor, weights: Tensor, choice: Tensor,
                return_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """x (B, T, D), weights (B, T, 2), choice (B, T) int64 -> (y (B, T, D), aux of the attention in dense mode)."""
        gdn_out, _ = self.gdn(x)
        w = weights.to(gdn_out.dtype).unsqueeze(-1)  # (B, T, 2, 1)
        w_gdn, w_softmax = w[:, :, GDN], w[:, :, SOFTMAX]
        if self.mode == "dense":
            attn_out, aux = self.attn(x, return_attention=return_attention)
            return w_gdn * gdn_out + w_softmax * attn_out, aux
        chosen = choice == SOFTMAX  # (B, T)
        n_chosen = chosen.sum(dim=1)  # (B,)
        q = int(n_chosen.max())  # the host sync: the padded number of queries
        if q == 0:
            return w_gdn * gdn_out, {}
        positions = torch.argsort((~chosen).to(torch.uint8), dim=1, stable=True)[:, :q]  # softmax tokens first
        valid = torch.arange(q, device=x.device) < n_chosen.unsqueeze(-1)  # (B, Q)
        attn_q = self.attn.attend_at(x, positions, valid)  # (B, Q, D)
        slot = (chosen.cumsum(dim=1) - 1).clamp(min=0)  # (B, T): token t's slot when it chose softmax
        attn_out = attn_q.gather(1, slot.unsqueeze(-1).expand(-1, -1, attn_q.shape[-1]))  # (B, T, D)
        return torch.where(chosen.unsqueeze(-1), w_softmax * attn_out, w_gdn * gdn_out), {}

    def no_weight_decay(self) -> set[str]:
        """What the two mechanisms declare (GatedDeltaNet's A_log, dt_bias), prefixed with their attribute."""
        return {f"{attribute}.{name}" for attribute, part in self.named_children()
                for name in getattr(part, "no_weight_decay", set)()}


__all__ = ["GDN", "ROUTING_MODES", "RoutedMixer", "SOFTMAX"]

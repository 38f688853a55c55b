"""A token mixer routed per token between Gated DeltaNet (linear attention) and softmax attention.

Takes x (B, T, D) and a router's decisions (nets/parts/token_router.py): `weights` (B, T, 2) one-hot with a
straight-through gradient and `choice` (B, T), 0 = gdn, 1 = softmax. Two ways to compute it:

- dense (the research seed's): both mechanisms on every token, y = w_gdn * gdn(x) + w_softmax * attn(x). The
  routing saves nothing; the router's gradient flows through both outputs (d y / d w = each mechanism's output).
- sparse (saves the softmax queries): GDN still runs on every token: its recurrent state must see the whole
  sequence, and its cost is linear anyway. Softmax attention computes queries, scores and the output projection
  only at the tokens routed to it, up to a fixed capacity (SoftmaxAttention.attend_at; keys and values stay full:
  every earlier token is a key, whatever it chose). y = where(taken, w_softmax * attn_out, w_gdn * gdn_out). Where
  no token overflows, the forward equals dense's to rounding (the other weight is exactly 0); the router's
  gradient flows only through the chosen mechanism's output (Switch-style), since the other's output is never
  computed at that token.

Capacity, as mixture-of-experts capacity factors have it: the window is cut into blocks of `block_size`
positions, and in each block softmax attention takes at most ceil(capacity_factor * block / 2) tokens (2: the
options; factor 1 is the share of a balanced router, 2 every token), the first ones in position order. A token
routed to softmax beyond that overflows: it takes GDN's output at full weight (its decision was not carried out,
so its router gets no gradient from it), and aux `overflow` (0-dim) is the share of the layer's tokens that
overflowed (`routing/overflow/layer_<i>`). Block n's queries see only the keys before the block's end, so the
scores cover slots x (block + 2 block + ... + T) pairs, about capacity_factor / 4 x T^2 (1 + block / T), against
the T^2 / 2 that causal attention over the whole window needs: the work shrinks with the capacity.

Why a fixed capacity (and not a padded count, FlexAttention or variable-length attention): every shape follows
from T alone, so a step reads nothing back from the device (the earlier padding to the batch's largest count read
it on the host every layer and step), and the sparse mode runs under torch.func.vmap (ensembles) and inside a
captured CUDA graph, both of which refuse data-dependent shapes. The attention is plain SDPA with a boolean mask,
which a GPU runs in its memory-efficient kernel and a CPU in its flash kernel, eager, in float64 for the tests.
FlexAttention's block mask would skip masked tiles within a block too, but it is fast only compiled (eager it
materialises every score), and its block mask must be rebuilt from the data every step; variable-length attention
packs each row's own count (a data-dependent total) and is causal by packed index, not by original position.
"""
from __future__ import annotations

from math import ceil

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import require
from nets.parts.attention import SoftmaxAttention
from nets.parts.flops import module_flops

ROUTING_MODES = ("dense", "sparse")
GDN, SOFTMAX = 0, 1  # the options, in the router's order


class RoutedMixer(nn.Module):
    """`gdn` (any mixer returning (y, aux)) and `attn` (a SoftmaxAttention) routed per token; `mode`: dense |
    sparse; `capacity_factor` and `block_size`: sparse mode's capacity (see the module docstring).
    `return_attention` reaches the attention in dense mode only (sparse has no full attention matrix)."""

    def __init__(self, gdn: nn.Module, attn: SoftmaxAttention, mode: str = "dense", capacity_factor: float = 1.25,
                 block_size: int = 128):
        super().__init__()
        require(mode in ROUTING_MODES, "mode", mode, " | ".join(ROUTING_MODES))
        require(mode == "dense" or hasattr(attn, "attend_at"), "mode", mode,
                "dense with a mixer that cannot attend at selected queries", related=["attn"])
        require(isinstance(capacity_factor, (int, float)) and not isinstance(capacity_factor, bool)
                and capacity_factor > 0, "capacity_factor", capacity_factor,
                "a number > 0 (1: a balanced router's share of each block, 2: every token)")
        require(isinstance(block_size, int) and not isinstance(block_size, bool) and block_size >= 1, "block_size",
                block_size, "an integer >= 1")
        self.gdn, self.attn, self.mode = gdn, attn, mode
        self.capacity_factor, self.block_size = capacity_factor, block_size

    def blocks(self, seq_len: int) -> tuple[int, int, int]:
        """(positions per block, blocks, softmax slots per block) of a window of seq_len positions: blocks of
        block_size (one block of T when shorter), the last one padded; slots = ceil(capacity_factor * block / 2),
        at most the block."""
        length = min(self.block_size, seq_len)
        # rounded first so that e.g. 1.1 * 40 / 2 = 22.000000000000004 gives 22, not 23
        slots = min(length, ceil(round(self.capacity_factor * length / 2, 9)))
        return length, -(-seq_len // length), slots

    def forward(self, x: Tensor, weights: Tensor, choice: Tensor,
                return_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """x (B, T, D), weights (B, T, 2), choice (B, T) int64 -> (y (B, T, D), aux: the attention's in dense mode,
        `overflow` in sparse mode)."""
        gdn_out, _ = self.gdn(x)
        w = weights.to(gdn_out.dtype).unsqueeze(-1)  # (B, T, 2, 1)
        w_gdn, w_softmax = w[:, :, GDN], w[:, :, SOFTMAX]
        if self.mode == "dense":
            attn_out, aux = self.attn(x, return_attention=return_attention)
            return w_gdn * gdn_out + w_softmax * attn_out, aux
        B, T = choice.shape
        length, n_blocks, slots = self.blocks(T)
        chosen = choice == SOFTMAX  # (B, T)
        blocked = F.pad(chosen, (0, n_blocks * length - T)).reshape(B, n_blocks, length)  # padding: not chosen
        rank = blocked.cumsum(dim=-1) - 1  # (B, N, L): a chosen token's rank among its block's chosen ones
        taken = blocked & (rank < slots)
        # each block's taken tokens first, in position order; the slots past its count hold other positions of the
        # block (any will do: their outputs are never read)
        order = torch.argsort((~taken).to(torch.uint8), dim=-1, stable=True)[..., :slots]  # (B, N, S)
        block = torch.arange(n_blocks, device=x.device).unsqueeze(-1)  # (N, 1)
        positions = (order + block * length).clamp(max=T - 1)  # the last block's padding is no position of the window
        attn_slots = self.attn.attend_at(x, positions, length).reshape(B, n_blocks * slots, -1)  # (B, N S, D)
        slot = (rank.clamp(0, slots - 1) + block * slots).reshape(B, -1)[:, :T]  # a taken token's slot
        attn_out = attn_slots.gather(1, slot.unsqueeze(-1).expand(-1, -1, attn_slots.shape[-1]))  # (B, T, D)
        taken = taken.reshape(B, -1)[:, :T].unsqueeze(-1)
        overflow = chosen.unsqueeze(-1) & ~taken  # routed to softmax, no slot left: GDN's output at full weight
        y = torch.where(taken, w_softmax * attn_out, torch.where(overflow, gdn_out, w_gdn * gdn_out))
        return y, {"overflow": overflow.float().mean()}

    def forward_flops(self, seq_len: int) -> int | None:
        """Matrix-product FLOPs on one sequence (nets/parts/flops.py): GDN's, and softmax attention's at every
        token (dense) or at the capacity's slots (sparse: what runs, whatever the routing); None when GDN's part
        cannot count itself."""
        gdn = module_flops(self.gdn, seq_len)
        if gdn is None:
            return None
        if self.mode == "dense":
            return gdn + self.attn.forward_flops(seq_len)
        length, _, slots = self.blocks(seq_len)
        return gdn + self.attn.attend_at_flops(seq_len, length, slots)

    def no_weight_decay(self) -> set[str]:
        """What the two mechanisms declare (GatedDeltaNet's A_log, dt_bias), prefixed with their attribute."""
        return {f"{attribute}.{name}" for attribute, part in self.named_children()
                for name in getattr(part, "no_weight_decay", set)()}


__all__ = ["GDN", "ROUTING_MODES", "RoutedMixer", "SOFTMAX"]

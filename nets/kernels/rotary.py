"""Rotary position embedding (RoPE; Su et al., "RoFormer", 2021): positions enter attention as rotations of q and k.

Channel pairs of a head (width d, even) are rotated by angles that grow with the position, one frequency per pair:

    theta_i = base^(-2i/d),  i = 0 .. d/2 - 1
    (x_i, x_{i+d/2}) at position m  ->  (x_i cos(m theta_i) - x_{i+d/2} sin(m theta_i),
                                         x_i sin(m theta_i) + x_{i+d/2} cos(m theta_i))

This is the rotate-half layout (GPT-NeoX, LLaMA in Hugging Face): pair i is channel i with channel i + d/2, not
the interleaved (2i, 2i+1) of the paper; the two differ only by a fixed permutation of the channels, which the
q/k projections absorb, and rotate-half needs no strided views. Read as complex numbers x_i + i x_{i+d/2}, it is
multiplication by exp(i m theta_i), so <rot(q, m), rot(k, n)> depends on m - n only: attention scores see relative
positions. Rotation adds no parameters. Positions are explicit (not 0..T-1) so that gathered queries
(SoftmaxAttention.attend_at) are rotated by their original positions.
"""
from __future__ import annotations

import torch
from torch import Tensor


def apply_rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """x (B, H, T, d) with d even; positions (T,) or (B, T) integer -> x rotated, same shape and dtype.

    The angles are computed in float32 at least (float64 for a float64 x): positions of a few thousand times a
    frequency lose their fractional part in half precision."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary embedding needs an even head width, got {d}")
    acc = torch.promote_types(x.dtype, torch.float32)
    inv_freq = base ** -(torch.arange(0, d // 2, device=x.device, dtype=acc) * 2 / d)  # (d/2,)
    angles = positions.to(acc).unsqueeze(-1) * inv_freq  # (T, d/2) or (B, T, d/2)
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)  # (B, 1, T, d/2): the same rotation for every head
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(acc).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


__all__ = ["apply_rotary"]

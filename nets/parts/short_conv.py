"""A causal depthwise short convolution over positions, as Gated DeltaNet, Mamba and Based put before their token
mixing: each channel at position t becomes a learned mix of itself at the last few positions, so one mixing step
can already see "this token and the one before it" (an n-gram feature) instead of needing a layer to build it."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ShortConvolution(nn.Module):
    """Causal depthwise 1-d convolution over positions (kernel `kernel_size`, one filter per channel, no bias),
    then SiLU: channel c at t sees only channel c at t - kernel_size + 1 .. t. x (B, T, C) -> (B, T, C)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        y = self.conv(x.transpose(1, 2))[..., :t]  # left context only: the padding on the right is cut off
        return F.silu(y.transpose(1, 2))

    def forward_flops(self, seq_len: int) -> int:
        """Multiply-adds of the convolution on one sequence, 2 FLOPs each: one filter of kernel_size per channel at
        every output position, the T + kernel_size - 1 the padded convolution computes before the cut."""
        channels, (kernel_size,) = self.conv.out_channels, self.conv.kernel_size
        return 2 * channels * kernel_size * (seq_len + kernel_size - 1)


__all__ = ["ShortConvolution"]

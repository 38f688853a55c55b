"""The Gated DeltaNet layer (Yang, Kautz, Hatamizadeh, "Gated Delta Networks", ICLR 2025) as a token mixer.

A mixer part like nets/mixers.py's: built as `GatedDeltaNet(d_model=..., ...)` by the transformer, it maps
x (B, T, D) -> (y (B, T, D), {}). Per head h (H heads, key width K, value width V):

    q, k, v = SiLU(causal depthwise conv(W_q x)), ... (one short convolution each)
    q, k    = q / |q|, k / |k|                                  (per head)
    β_t     = sigmoid(W_b x_t)                                  (B, T, H), the write strength
    g_t     = -exp(A_log) * softplus(W_a x_t + dt_bias)         (B, T, H), the log decay (<= 0)
    o       = gated delta rule (nets/gated_delta.py), chunked (mode=chunk) or one step at a time (recurrent)
    y       = W_o [RMSNorm(o_h) * SiLU(W_g x)_h]_h              (RMSNorm over each head's V, a weight per V)

The initialisation follows the paper's code: A ~ U[1, 16) per head (A_log = log A), and dt log-uniform in
[0.001, 0.1] with dt_bias its inverse softplus, so that softplus(dt_bias) = dt at the start. A_log and dt_bias take
no weight decay: `no_weight_decay()` declares them, and their `parameter_roles` are "bias" (they are per-head
offsets of the log decay), which the generic rule also exempts. There is no attention matrix, so
`return_attention` is accepted and ignored. The output at t depends only on inputs at positions <= t.

Kernels: the pure-PyTorch chunked form is the reference and the CPU path. On a GPU, with the optional
flash-linear-attention package installed (`pip install -e '.[fla]'`), `kernel=auto` runs its fused Triton kernel
(`fla.ops.gated_delta_rule.chunk_gated_delta_rule`, the same convention and numbers; chunk size 64) instead;
`kernel=torch` keeps the reference, `kernel=fla` insists on the package.
"""
from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from nets.gated_delta import chunk_gated_delta_rule, recurrent_gated_delta_rule
from nets.settings import require
from nets.short_conv import ShortConvolution

MODES = ("chunk", "recurrent")
KERNELS = ("auto", "torch", "fla")


def fla_installed() -> bool:
    """Whether flash-linear-attention's kernels can be imported (the optional `fla` extra; they need a GPU)."""
    return importlib.util.find_spec("fla") is not None


def fla_chunk_rule():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_rule
    return fla_rule


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet token mixer: q, k, v, β and the decay from x, the gated delta rule per head, a gated
    RMSNorm and an output projection (see the module docstring).

    `n_heads` heads of key width `head_dim` (null: d_model // n_heads) and value width head_dim * `expand_v`;
    `conv_size`: the kernel of the short convolutions on q, k, v; `chunk_size`: the chunk of the chunked form;
    `mode`: chunk (training; a sequence shorter than chunk_size is one chunk) | recurrent (the reference loop; same
    numbers); `use_gate`: multiply the normed output by SiLU of an output gate projection; `norm_eps`: the
    RMSNorm's epsilon; `kernel`: auto (flash-linear-attention's on a GPU when installed, else PyTorch) | torch |
    fla (the chunked form only; a CPU input with kernel=fla is refused)."""

    parameter_roles = {"A_log": "bias", "dt_bias": "bias"}

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: int | None = None, expand_v: float = 1.0,
                 conv_size: int = 4, chunk_size: int = 64, mode: str = "chunk", use_gate: bool = True,
                 norm_eps: float = 1e-5, kernel: str = "auto"):
        super().__init__()
        require(isinstance(n_heads, int) and n_heads >= 1, "n_heads", n_heads, "an integer >= 1")
        if head_dim is None:
            require(d_model % n_heads == 0, "n_heads", n_heads, f"a divisor of d_model={d_model}",
                    related=["d_model"])
            head_dim = d_model // n_heads
        require(isinstance(head_dim, int) and head_dim >= 1, "head_dim", head_dim,
                "an integer >= 1, or null for d_model // n_heads")
        require(isinstance(expand_v, (int, float)) and expand_v > 0 and float(head_dim * expand_v).is_integer(),
                "expand_v", expand_v, f"a positive number that makes head_dim * expand_v (head_dim={head_dim}) "
                "a whole number")
        require(isinstance(conv_size, int) and conv_size >= 1, "conv_size", conv_size, "an integer >= 1")
        require(isinstance(chunk_size, int) and chunk_size >= 1, "chunk_size", chunk_size, "an integer >= 1")
        require(mode in MODES, "mode", mode, " | ".join(MODES))
        require(use_gate in (True, False), "use_gate", use_gate, "true or false")
        require(isinstance(norm_eps, (int, float)) and norm_eps > 0, "norm_eps", norm_eps, "a positive number")
        require(kernel in KERNELS, "kernel", kernel, " | ".join(KERNELS))
        require(kernel != "fla" or fla_installed(), "kernel", kernel,
                "auto or torch: the flash-linear-attention package is not installed (pip install -e '.[fla]')")
        require(kernel != "fla" or mode == "chunk", "kernel", kernel, "auto or torch with mode=recurrent",
                related=["mode"])
        self.kernel, self.fla_available = kernel, fla_installed()
        self.n_heads, self.head_dim, self.head_v_dim = n_heads, head_dim, int(head_dim * expand_v)
        self.chunk_size, self.mode, self.use_gate = chunk_size, mode, use_gate
        key_dim, value_dim = n_heads * head_dim, n_heads * self.head_v_dim

        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.q_conv = ShortConvolution(key_dim, conv_size)
        self.k_conv = ShortConvolution(key_dim, conv_size)
        self.v_conv = ShortConvolution(value_dim, conv_size)
        # the paper's code: A ~ U[1, 16); dt log-uniform in [dt_min, dt_max], floored, stored as inverse softplus
        A = torch.empty(n_heads).uniform_(1, 16)
        self.A_log = nn.Parameter(torch.log(A))
        dt_min, dt_max, dt_floor = 0.001, 0.1, 1e-4
        dt = torch.exp(torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.g_proj = nn.Linear(d_model, value_dim, bias=False) if use_gate else None
        self.o_norm = nn.RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def no_weight_decay(self) -> set[str]:
        return {"A_log", "dt_bias"}

    def uses_fla(self, x: Tensor) -> bool:
        """Whether this input runs flash-linear-attention's kernel (see `kernel`)."""
        if self.kernel == "fla":
            if not x.is_cuda:
                raise RuntimeError("GatedDeltaNet(kernel='fla') runs on CUDA inputs only; kernel=auto falls back "
                                   "to the PyTorch form on the CPU")
            return True
        return self.kernel == "auto" and self.mode == "chunk" and x.is_cuda and self.fla_available

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        heads = "b t (h d) -> b t h d"
        q = F.normalize(rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads), dim=-1)
        k = F.normalize(rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads), dim=-1)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)
        beta = self.b_proj(x).sigmoid()                                              # (B, T, H)
        acc = torch.promote_types(x.dtype, torch.float32)                           # decays in float32 at least
        g = -self.A_log.to(acc).exp() * F.softplus(self.a_proj(x).to(acc) + self.dt_bias.to(acc))  # (B, T, H)
        if self.uses_fla(x):
            o, _ = fla_chunk_rule()(q, k, v, g, beta)
        elif self.mode == "chunk":  # a sequence shorter than a chunk is one chunk of its length (no padding)
            o, _ = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=min(self.chunk_size, x.shape[1]))
        else:
            o, _ = recurrent_gated_delta_rule(q, k, v, g, beta)
        o = self.o_norm(o)                                                           # (B, T, H, V)
        if self.g_proj is not None:
            o = o * F.silu(rearrange(self.g_proj(x), heads, h=self.n_heads))
        return self.o_proj(rearrange(o, "b t h d -> b t (h d)")), {}


__all__ = ["GatedDeltaNet", "KERNELS", "fla_installed"]

"""The Gated DeltaNet layer (Yang, Kautz, Hatamizadeh, "Gated Delta Networks", ICLR 2025) as a token mixer.

A mixer part like nets/parts/attention.py's: built as `GatedDeltaNet(d_model=..., ...)` by the transformer, it maps
x (B, T, D) -> (y (B, T, D), {}). Per head h (H heads, key width K, value width V):

    q, k, v = SiLU(causal depthwise conv(W_q x)), ... (one short convolution each)
    q, k    = q / |q|, k / |k|                                  (per head)
    β_t     = sigmoid(W_b x_t)                                  (B, T, H), the write strength
    g_t     = -exp(A_log) * softplus(W_a x_t + dt_bias)         (B, T, H), the log decay (<= 0)
    o       = gated delta rule (nets/kernels/gated_delta.py), chunked (mode=chunk) or one step at a time (recurrent)
    y       = W_o [RMSNorm(o_h) * SiLU(W_g x)_h]_h              (RMSNorm over each head's V, a weight per V)

The initialisation follows the paper's code: A ~ U[1, 16) per head (A_log = log A), and dt log-uniform in
[0.001, 0.1] with dt_bias its inverse softplus, so that softplus(dt_bias) = dt at the start. A_log and dt_bias take
no weight decay: `no_weight_decay()` declares them, and their `parameter_roles` are "bias" (they are per-head
offsets of the log decay), which the generic rule also exempts. There is no attention matrix, so
`return_attention` is accepted and ignored. The output at t depends only on inputs at positions <= t.

Kernels: the pure-PyTorch chunked form is the reference and the CPU path. On a GPU, with the optional
flash-linear-attention package installed (`pip install -e '.[fla]'`), `kernel=auto` runs its fused Triton kernel
(`fla.ops.gated_delta_rule.chunk_gated_delta_rule`, the same convention and numbers; chunk size 64) instead, where
it runs correctly (decided when the layer is built, nets/kernels/fla_choice.py); `kernel=torch` keeps the reference,
`kernel=fla` insists on fla and is refused where it cannot run. fla is handed what its own GatedDeltaNet layer hands
it (`fla_rule`). Under torch.func transforms and inside `nets.kernels.fla_choice.reference_form()` (double backward) every
setting runs the PyTorch form: fla's Function supports neither.

Where the PyTorch chunked form runs, `compile` decides whether it runs under torch.compile
(`compiled_chunk_gated_delta_rule`): eager, it launches a dozen small kernels per chunk and layer and the elementwise
work of its decays goes through memory op by op, which keeps a GPU waiting; compiled, they are fused. `auto` compiles on CUDA inputs, `true` everywhere (a CPU compiles
too, slowly the first time), `false` never. The uncompiled form stays the reference, and runs wherever compiled code
cannot: under torch.func transforms, inside `reference_form()` (compiled code has no double backward), and inside
an enclosing torch.compile (which traces the uncompiled form itself).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from core.errors import require
from nets.kernels import fla_choice
from nets.kernels.gated_delta import (chunk_gated_delta_rule, chunk_rule_flops, compiled_chunk_gated_delta_rule,
                                      recurrent_gated_delta_rule)
from nets.parts.flops import linear_flops, matmul_flops
from nets.parts.short_conv import ShortConvolution

MODES = ("chunk", "recurrent")
KERNELS = ("auto", "torch", "fla")


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet token mixer: q, k, v, β and the decay from x, the gated delta rule per head, a gated
    RMSNorm and an output projection (see the module docstring).

    `n_heads` heads of key width `head_dim` (null: d_model // n_heads) and value width head_dim * `expand_v`;
    `conv_size`: the kernel of the short convolutions on q, k, v; `chunk_size`: the chunk of the chunked form;
    `mode`: chunk (training; a sequence shorter than chunk_size is one chunk) | recurrent (the reference loop; same
    numbers); `use_gate`: multiply the normed output by SiLU of an output gate projection; `norm_eps`: the
    RMSNorm's epsilon; `kernel`: auto (flash-linear-attention's where it runs correctly, else PyTorch) | torch |
    fla (the chunked form only; refused where fla cannot run, and on a CPU input). `runs_fla`: the choice made
    at build (fla on inputs it takes, outside torch.func transforms and `reference_form()`). `compile`: auto (the
    PyTorch chunked form compiled on CUDA inputs) | true | false (see the module docstring; `compiles`)."""

    parameter_roles = {"A_log": "bias", "dt_bias": "bias"}

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: int | None = None, expand_v: float = 1.0,
                 conv_size: int = 4, chunk_size: int = 64, mode: str = "chunk", use_gate: bool = True,
                 norm_eps: float = 1e-5, kernel: str = "auto", compile: str | bool = "auto"):
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
        require(compile == "auto" or isinstance(compile, bool), "compile", compile,
                "auto (compiled on CUDA), true or false")
        require(kernel != "fla" or mode == "chunk", "kernel", kernel, "auto or torch with mode=recurrent",
                related=["mode"])
        refused = fla_choice.fla_refusal() if kernel == "fla" or (kernel == "auto" and mode == "chunk") else None
        require(kernel != "fla" or refused is None, "kernel", kernel, f"auto or torch: {refused}")
        if kernel == "auto" and refused is not None:
            fla_choice.note_fallback(refused)
        self.kernel, self.runs_fla = kernel, kernel != "torch" and mode == "chunk" and refused is None
        self.n_heads, self.head_dim, self.head_v_dim = n_heads, head_dim, int(head_dim * expand_v)
        self.chunk_size, self.mode, self.use_gate = chunk_size, mode, use_gate
        self.compile_setting = compile  # not `self.compile`: that is nn.Module's method
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
        """Whether this forward runs flash-linear-attention's kernel (see `kernel` and `runs_fla`)."""
        if not self.runs_fla or fla_choice.reference_form_required():
            return False
        if not fla_choice.fla_takes(x):
            if self.kernel == "fla":
                raise RuntimeError(f"GatedDeltaNet(kernel='fla') runs on {fla_choice.FLA_DEVICE} inputs in float32, "
                                   f"bfloat16 or float16 only (got {x.device.type}, {x.dtype}); kernel=auto falls "
                                   "back to the PyTorch form")
            return False
        return True

    def compiles_on(self, device_type: str) -> bool:
        """Whether the PyTorch chunked form runs compiled on this device type (the setting alone)."""
        return self.mode == "chunk" and (self.compile_setting is True or
                                         (self.compile_setting == "auto" and device_type == "cuda"))

    def compiles(self, x: Tensor) -> bool:
        """Whether this forward runs the chunked form compiled: `compiles_on` x's device, and none of the places
        where only the uncompiled form runs (torch.func transforms, `reference_form()`, an enclosing compile)."""
        return (self.compiles_on(x.device.type) and not fla_choice.reference_form_required()
                and not torch.compiler.is_compiling())

    def fla_rule(self, q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """fla's chunk rule, handed what fla's own GatedDeltaNet layer hands it (fla 0.6.0,
        fla/layers/gated_deltanet.py): q, k (B, T, H, K) and v (B, T, H, V) as the convolutions give them, the raw
        projections a and b (B, T, H), all five contiguous and in one dtype (the compute dtype: autocast's under
        mixed precision, as the projections come out); the kernel takes the L2 norm of q and k, β = sigmoid(b) and
        g = -exp(A_log) softplus(a + dt_bias) itself, with A_log and dt_bias the parameters as they are."""
        q, k, v, a, b = (t.to(v.dtype).contiguous() for t in (q, k, v, a, b))
        o, _ = fla_choice.fla_chunk_rule()(q, k, v, a, b, use_qk_l2norm_in_kernel=True,
                                           use_beta_sigmoid_in_kernel=True, use_gate_in_kernel=True,
                                           A_log=self.A_log, dt_bias=self.dt_bias)
        return o

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        heads = "b t (h d) -> b t h d"
        q = rearrange(self.q_conv(self.q_proj(x)), heads, h=self.n_heads)
        k = rearrange(self.k_conv(self.k_proj(x)), heads, h=self.n_heads)
        v = rearrange(self.v_conv(self.v_proj(x)), heads, h=self.n_heads)
        if self.uses_fla(x):
            o = self.fla_rule(q, k, v, self.a_proj(x), self.b_proj(x))
        else:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            beta = self.b_proj(x).sigmoid()                                          # (B, T, H)
            acc = torch.promote_types(x.dtype, torch.float32)                       # decays in float32 at least
            g = -self.A_log.to(acc).exp() * F.softplus(self.a_proj(x).to(acc) + self.dt_bias.to(acc))  # (B, T, H)
            if self.compiles(x):  # padded to whole chunks: one compiled graph for every length of as many chunks
                o = compiled_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=self.chunk_size)
            elif self.mode == "chunk":  # a sequence shorter than a chunk is one chunk of its length (no padding)
                o, _ = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=min(self.chunk_size, x.shape[1]))
            else:
                o, _ = recurrent_gated_delta_rule(q, k, v, g, beta)
        o = self.o_norm(o)                                                           # (B, T, H, V)
        if self.g_proj is not None:
            o = o * F.silu(rearrange(self.g_proj(x), heads, h=self.n_heads))
        return self.o_proj(rearrange(o, "b t h d -> b t (h d)")), {}

    def forward_flops(self, seq_len: int) -> int:
        """Matrix-product FLOPs of a forward on one sequence (nets/parts/flops.py): the projections (q, k, v, the
        decay and write strength, the output gate, the output), the short convolutions and the delta rule, chunked
        as the uncompiled form chunks (chunks of min(chunk_size, T); the compiled form pads a shorter sequence to
        one chunk, which is not counted) or, in mode recurrent, two matrix-vector products per position and head
        (Sᵀk and Sᵀq; the rank-one write k ⊗ delta is an outer product, elementwise work)."""
        T, H, K, V = seq_len, self.n_heads, self.head_dim, self.head_v_dim
        projections = sum(linear_flops(layer, T) for layer in (self.q_proj, self.k_proj, self.v_proj, self.a_proj,
                                                                self.b_proj, self.g_proj, self.o_proj)
                          if layer is not None)
        convs = sum(conv.forward_flops(T) for conv in (self.q_conv, self.k_conv, self.v_conv))
        if self.mode == "chunk":
            rule = chunk_rule_flops(T, H, K, V, min(self.chunk_size, T))
        else:
            rule = 2 * H * T * matmul_flops(1, K, V)
        return projections + convs + rule


def kernel_in_use(net: nn.Module, device_type: str, vmapped: bool = False) -> str | None:
    """One line for the run's start and summary.json: which kernel the net's Gated DeltaNet layers run when it
    trains on `device_type` (`vmapped`: under torch.func.vmap, as an ensemble), `fla`, `torch (why)` or
    `torch, compiled (why)`; None for a net without GDN layers."""
    found = []
    for layer in (m for m in net.modules() if isinstance(m, GatedDeltaNet)):
        if layer.kernel == "torch" or layer.mode == "recurrent":
            why = "kernel=torch" if layer.kernel == "torch" else "mode=recurrent"
        elif not layer.runs_fla:
            why = fla_choice.fla_refusal()
        elif vmapped:
            why = "under torch.func.vmap, which fla's kernel does not support"
        elif device_type != fla_choice.FLA_DEVICE:
            why = f"the run is on {device_type}"
        else:
            why = None
        compiled = layer.compiles_on(device_type) and not vmapped
        line = ("fla (flash-linear-attention's Triton kernel)" if why is None
                else f"torch{', compiled' if compiled else ''} ({why})")
        if line not in found:
            found.append(line)
    return "; ".join(found) or None


__all__ = ["GatedDeltaNet", "KERNELS", "kernel_in_use"]

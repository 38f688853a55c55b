"""The gated delta rule (Yang, Kautz, Hatamizadeh, "Gated Delta Networks", ICLR 2025) in pure PyTorch.

Per head, a state S (K, V) is decayed, corrected towards the new value for the current key, and read by the query:

    S_t = a_t S_{t-1} + k_t (β_t (v_t - a_t S_{t-1}ᵀ k_t))ᵀ,    o_t = S_tᵀ (scale q_t),    a_t = exp(g_t)

g (log decay, <= 0) and β (write strength, in (0, 1)) are per token and head. q and k are L2-normalised by the
caller. Two forms with one convention (that of flash-linear-attention's `chunk_gated_delta_rule` and
`fused_recurrent_gated_delta_rule`): q, k (B, T, H, K); v (B, T, H, V); g, beta (B, T, H); initial_state
(B, H, K, V). Each returns (o (B, T, H, V) in v's dtype, the final state (B, H, K, V) or None). The state is kept
in float32 (float64 for float64 inputs), like the decays: it sums over the whole sequence.

`recurrent_gated_delta_rule` is the reference, a loop over t; `chunk_gated_delta_rule` is the chunked (WY / UT
transform) algorithm used for training: matmuls over chunks of C positions, a loop only over chunks;
`compiled_chunk_gated_delta_rule` runs the chunked form under torch.compile (what a GPU runs where
flash-linear-attention's kernel cannot), with the uncompiled form as its reference.
"""
from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from core.errors import require


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None) -> None:
    """Shapes agree: q (B, T, H, K), k like q, v (B, T, H, V), g and beta (B, T, H), initial_state (B, H, K, V)."""
    require(q.dim() == 4 and q.shape[1] >= 1, "q", tuple(q.shape), "a (B, T, H, K) tensor with T >= 1")
    B, T, H, K = q.shape
    require(k.shape == q.shape, "k", tuple(k.shape), f"q's shape (B, T, H, K) = {tuple(q.shape)}")
    require(v.dim() == 4 and v.shape[:3] == q.shape[:3], "v", tuple(v.shape), f"(B, T, H, V) with B, T, H = {B, T, H}")
    require(g.shape == q.shape[:3], "g", tuple(g.shape), f"(B, T, H) = {B, T, H}")
    require(beta.shape == q.shape[:3], "beta", tuple(beta.shape), f"(B, T, H) = {B, T, H}")
    if initial_state is not None:
        state = (B, H, K, v.shape[-1])
        require(initial_state.shape == state, "initial_state", tuple(initial_state.shape), f"(B, H, K, V) = {state}")


def pad_to_chunks(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, chunk_size: int,
                  fresh: bool = False) -> tuple[Tensor, ...]:
    """q, k, v, g, beta padded along T to a whole number of chunks with zeros: padded positions have k = 0 and
    beta = 0 (they write nothing) and g = 0 (they decay nothing), so the outputs before them are unchanged.
    `fresh`: pad even by nothing (a copy), so that no result is a view of another tensor."""
    pad = -q.shape[1] % chunk_size
    if not pad and not fresh:
        return q, k, v, g, beta
    q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    g, beta = (F.pad(x, (0, 0, 0, pad)) for x in (g, beta))
    return q, k, v, g, beta


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where decays and the state accumulate: float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def recurrent_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None = None,
                               initial_state: Tensor | None = None, output_final_state: bool = False
                               ) -> tuple[Tensor, Tensor | None]:
    """The recurrence as written, one position at a time (computed in float32, or float64 for float64 inputs)."""
    _check(q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    out_dtype, acc = v.dtype, _acc_dtype(q.dtype)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(acc) for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(acc)
    outputs = []
    for t in range(T):
        k_t, v_t, beta_t = k[:, t], v[:, t], beta[:, t, :, None]                   # (B, H, K), (B, H, V), (B, H, 1)
        S = g[:, t].exp()[..., None, None] * S                                      # decay: a_t S_{t-1}
        delta = beta_t * (v_t - einsum(S, k_t, "b h k v, b h k -> b h v"))          # β_t (v_t - a_t S_{t-1}ᵀ k_t)
        S = S + einsum(k_t, delta, "b h k, b h v -> b h k v")                       # write k_t ⊗ delta
        outputs.append(einsum(S, scale * q[:, t], "b h k v, b h k -> b h v"))       # o_t = S_tᵀ (scale q_t)
    return torch.stack(outputs, dim=1).to(out_dtype), S if output_final_state else None


def chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, chunk_size: int = 64,
                           scale: float | None = None, initial_state: Tensor | None = None,
                           output_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """The same recurrence, chunk by chunk. Within a chunk of C positions i = 1..C, with S_0 the carried state,
    G_i = g_1 + ... + g_i (cumulative log decay) and γ_i = exp(G_i):

    1. Unrolling S_i = a_i S_{i-1} + k_i u_iᵀ, where u_i = β_i (v_i - a_i S_{i-1}ᵀ k_i) is what position i
       writes, gives S_i = γ_i S_0 + Σ_{j<=i} (γ_i/γ_j) k_j u_jᵀ.
    2. Putting that S_{i-1} into u_i: u_i + β_i Σ_{j<i} (γ_i/γ_j)(k_iᵀ k_j) u_j = β_i v_i - β_i γ_i S_0ᵀ k_i.
       The delta rule's sequential dependence within the chunk is a unit lower-triangular system (I + A) U = ...
       with A_ij = β_i (γ_i/γ_j) k_iᵀ k_j for j < i. Solving it once per chunk (the UT transform, forward
       substitution) gives the WY representation U = u - w S_0 with u = (I + A)⁻¹ βV and w = (I + A)⁻¹ (βγ K):
       both depend on the chunk's own tokens only, so all chunks are solved at once.
    3. Per chunk, in order: U = u - w S_0; the output o_i = γ_i S_0ᵀ q̃_i + Σ_{j<=i} (γ_i/γ_j)(k_jᵀ q̃_i) u_j
       (q̃ = scale q): the carried state's contribution plus an attention-like intra-chunk term; and the state
       S_C = γ_C S_0 + Σ_j (γ_C/γ_j) k_j u_jᵀ.

    Every decay factor is exp of a difference G_i - G_j <= 0 (j <= i), so nothing overflows. Matmuls run in the
    input dtype; decays, the triangular solve and the carried state in float32 (float64 for float64 inputs).
    T not a multiple of C is padded with g = 0, beta = 0, k = 0 (padded positions write nothing, decay nothing).
    Without an initial state the first chunk's products with the (zero) state are skipped, and the state after the
    last chunk is computed only when it is asked for (`chunk_rule_flops` counts what runs)."""
    _check(q, k, v, g, beta, initial_state)
    require(isinstance(chunk_size, int) and chunk_size >= 1, "chunk_size", chunk_size, "an integer >= 1")
    B, T, H, K = q.shape
    V, C, dtype, acc = v.shape[-1], chunk_size, q.dtype, _acc_dtype(q.dtype)
    scale = K ** -0.5 if scale is None else scale

    q, k, v, g, beta = pad_to_chunks(q, k, v, g, beta, C)
    chunks = "b (n c) h d -> b h n c d"
    q, k, v = (rearrange(x, chunks, c=C) for x in (q, k, v))                       # (B, H, N, C, K|V)
    g, beta = (rearrange(x, "b (n c) h -> b h n c", c=C) for x in (g, beta))        # (B, H, N, C)

    G = g.to(acc).cumsum(-1)                                                        # G_i, (B, H, N, C)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()             # j <= i
    ratio = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, -torch.inf).exp()  # γ_i/γ_j, (B, H, N, C, C)
    gamma = G.exp()[..., None]                                                      # γ_i, (B, H, N, C, 1)
    to_end = (G[..., -1:] - G).exp()[..., None]                                     # γ_C/γ_i, (B, H, N, C, 1)

    # Step 2: the UT transform, all chunks at once.
    kk = einsum(k, k, "b h n i d, b h n j d -> b h n i j")                          # k_iᵀ k_j
    A = (beta[..., None] * kk * ratio.to(dtype)).tril(-1)                           # strictly lower
    eye = torch.eye(C, dtype=acc, device=q.device)
    rhs = torch.cat([v * beta[..., None], k * (beta[..., None] * gamma).to(dtype)], dim=-1).to(acc)  # [βV | βγK], (.., C, V+K)
    wy = torch.linalg.solve_triangular(eye + A.to(acc), rhs, upper=False, unitriangular=True).to(dtype)
    u, w = wy[..., :V], wy[..., V:]                                                 # (.., C, V), (.., C, K)

    # Step 3: the intra-chunk scores (γ_i/γ_j) q̃_iᵀ k_j, then the loop over chunks carrying the state.
    q = q * scale
    scores = einsum(q, k, "b h n i d, b h n j d -> b h n i j") * ratio.to(dtype)   # zero above the diagonal
    q_decayed, k_to_end = q * gamma.to(dtype), k * to_end.to(dtype)
    S = None if initial_state is None else initial_state.to(acc)  # None: a zero state, whose products are skipped
    outputs, N = [], q.shape[2]
    for n in range(N):
        if S is None:
            U = u[:, :, n]                                                          # (B, H, C, V)
            outputs.append(scores[:, :, n] @ U)
        else:
            S_in = S.to(dtype)
            U = u[:, :, n] - w[:, :, n] @ S_in
            outputs.append(q_decayed[:, :, n] @ S_in + scores[:, :, n] @ U)
        if n < N - 1 or output_final_state:  # the state after the last chunk is only needed when asked for
            written = (k_to_end[:, :, n].transpose(-1, -2) @ U).to(acc)             # (B, H, K, V)
            S = written if S is None else G[:, :, n, -1, None, None].exp() * S + written
    o = rearrange(torch.stack(outputs, dim=2), "b h n c v -> b (n c) h v")[:, :T]
    return o.to(v.dtype), S if output_final_state else None


def chunk_rule_flops(seq_len: int, n_heads: int, key_dim: int, value_dim: int, chunk_size: int) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of `chunk_gated_delta_rule` on one sequence of `seq_len` positions
    with chunks of `chunk_size`, as a layer runs it: no initial state, no final state. Per head and chunk: k_iᵀ k_j
    and the scores (2 C² K each), scores @ U (2 C² V); for every chunk after the first the state's products w S and
    q S (2 C K V each); the state written after every chunk but the last (2 C K V). The triangular solve and the
    elementwise decays are not matrix products and are left out (a few per cent of a layer's FLOPs)."""
    C, K, V = chunk_size, key_dim, value_dim
    N = -(-seq_len // C)  # chunks, the last one padded
    per_head = N * (4 * C * C * K + 2 * C * C * V) + (N - 1) * (4 * C * K * V + 2 * C * K * V)
    return n_heads * per_head


COMPILE_BACKEND = "inductor"  # torch.compile's backend for the compiled form (tests count recompiles with "eager")


@cache
def _compiled_rule(backend: str):
    return torch.compile(chunk_gated_delta_rule, backend=backend)


def compiled_chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, chunk_size: int = 64,
                                    scale: float | None = None) -> Tensor:
    """`chunk_gated_delta_rule` under torch.compile, as a layer's forward runs it (no initial or final state): the
    output o (B, T, H, V). The inputs are padded to whole chunks before they reach the compiled code, so every
    length with the same number of chunks shares one compiled graph (the loop over chunks is unrolled: a graph per
    number of chunks); the batch size turns symbolic when a second one is seen (torch.compile's automatic dynamic
    shapes), so training, evaluation and probes of other batch sizes add a compile or two, not one per step. The
    compiled code always gets fresh tensors (padded, or copied when no padding is needed): it is compiled apart for
    views and for tensors of their own, and a length that needs padding would otherwise recompile it."""
    T = q.shape[1]
    padded = pad_to_chunks(q, k, v, g, beta, chunk_size, fresh=True)
    o, _ = _compiled_rule(COMPILE_BACKEND)(*padded, chunk_size, scale)
    return o[:, :T]

"""A mixture-of-experts FFN (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021): a router sends each token to
its top-k experts, and only those compute on it.

    p = softmax(W_router x)                                  (..., E), sums to 1 over experts
    chosen = top_k(p)                                        k = 1 or 2 experts per token
    y = sum over chosen i of w_i * expert_i(x),  w_i = p_i / sum_chosen p_j  (renormalize; top_k 2's default)

Dispatch groups the work by expert: the (token, slot) assignments are sorted by expert, each expert runs once on
the contiguous slice of its tokens, and the weighted outputs are added back at their tokens. The shapes are
data-dependent (and the split sizes are read on the host), so this part cannot run under `torch.func.vmap`
(ensembles) or a captured CUDA graph.

Capacity: `capacity_factor` null is dropless (every assignment is computed). With a factor c each expert takes at
most ceil(c * tokens * k / E) assignments, first come in token order (token 0's slots, then token 1's, ...); an
assignment beyond that is dropped: its slot adds 0 and the residual stream carries the token past the FFN.

Aux (other code relies on these names): `routing` the router probabilities (..., E), so the routing
regularisers and usage metrics treat experts as they treat routed heads; `expert_index` (..., k) int64, the
router's choices (dropped ones included); `router_logits` (..., E), for the z-loss; `dropped` (0-dim), the
fraction of assignments dropped (0 when dropless).
"""
from __future__ import annotations

from math import ceil

import torch
from einops import rearrange
from torch import Tensor, nn

from core.errors import require
from nets.parts.ffns import GLUFFN, MLPFFN, hidden_width
from nets.parts.matching import EXPERTS, ffn_parameter_count, matched_hidden

MATCHES = (None, "dense_total", "dense_active")


class MoEFFN(nn.Module):
    """E experts (MLP or GLU of width `d_hidden`) behind a bias-free linear router d_model -> E.

    The experts are a ModuleList of the dense parts themselves (MLPFFN / GLUFFN), not stacked (E, in, out) tensors:
    each expert is then exactly a dense FFN (the same init under the transformer, the same weight-decay roles, an
    expert's parameter count is a real module's), and a grouped dispatch calls one expert at a time on its own
    tokens anyway, so stacking would buy nothing without a grouped-matmul kernel.

    `match`: null uses d_hidden as given; `dense_total` reads d_hidden as the dense MLP FFN's width and sizes the
    experts so that all of them plus the router count as many parameters; `dense_active` makes each expert as
    large as that dense FFN (nets/parts/matching.py).
    `jitter`: Switch's multiplicative noise on the router's input, x * U(1 - jitter, 1 + jitter), in training only;
    the experts see x as it is.
    `renormalize`: true divides the chosen probabilities by their sum (GShard / Mixtral top-2); false keeps them
    as they are (Switch's top-1 gate). null (the default) renormalises for top_k 2 only: with top_k 1 the
    renormalised weight is always 1 and the task loss would give the router no gradient at all (it would learn
    from regularisers only).
    The router runs in float32 under autocast (Switch's selective precision: its softmax is what rounding hurts).
    """

    # how many tokens each expert takes depends on the data: no torch.func.vmap (ensembles), no CUDA-graph capture
    data_dependent_shapes = True

    def __init__(self, d_model: int, n_experts: int = 4, top_k: int = 1, d_hidden: int | None = None,
                 expert: str = "mlp", activation: str = "gelu", bias: bool = True, jitter: float = 0.0,
                 capacity_factor: float | None = None, match: str | None = None, renormalize: bool | None = None):
        super().__init__()
        require(is_int(n_experts) and n_experts >= 2, "n_experts", n_experts, "an integer >= 2")
        require(is_int(top_k) and top_k in (1, 2) and top_k <= n_experts, "top_k", top_k,
                f"1 or 2, at most n_experts={n_experts}", related=["n_experts"])
        require(expert in EXPERTS, "expert", expert, ", ".join(EXPERTS))
        require(isinstance(bias, bool), "bias", bias, "true or false")
        require(is_number(jitter) and 0 <= jitter < 1, "jitter", jitter, "a number in [0, 1)")
        require(capacity_factor is None or (is_number(capacity_factor) and capacity_factor > 0), "capacity_factor",
                capacity_factor, "null (dropless) or a number > 0")
        require(match in MATCHES, "match", match, "null (d_hidden as given), dense_total or dense_active (d_hidden "
                "is the dense MLP's width, matched in all or in one expert's parameters)")
        require(renormalize in (None, True, False), "renormalize", renormalize,
                "null (= true for top_k 2, false for top_k 1), true or false")
        renormalize = top_k > 1 if renormalize is None else renormalize
        d_hidden = hidden_width(d_model, d_hidden)
        dense = ffn_parameter_count("mlp", d_model, d_hidden, bias)
        # what it was matched to, for the parameter report at start: (description, parameters to compare with)
        self.matched_to = {None: None, "dense_total": (f"the dense MLP of hidden {d_hidden}", dense),
                           "dense_active": (f"the dense MLP of hidden {d_hidden}, per expert",
                                            dense * n_experts + d_model * n_experts)}[match]
        if match == "dense_total":
            d_hidden = matched_hidden(expert, d_model, d_hidden, bias, n_experts=n_experts, router=True)
        elif match == "dense_active":
            d_hidden = matched_hidden(expert, d_model, d_hidden, bias)
        self.n_experts, self.top_k, self.d_hidden = n_experts, top_k, d_hidden
        self.jitter, self.capacity_factor, self.renormalize = float(jitter), capacity_factor, renormalize
        self.router = nn.Linear(d_model, n_experts, bias=False)
        part = MLPFFN if expert == "mlp" else GLUFFN
        self.experts = nn.ModuleList(part(d_model, d_hidden, activation, bias) for _ in range(n_experts))

    def capacity(self, n_tokens: int) -> int | None:
        """Most assignments one expert takes from `n_tokens` tokens; None when dropless."""
        if self.capacity_factor is None:
            return None
        # rounded first so that e.g. 1.1 * 40 / 4 = 11.000000000000002 gives 11, not 12
        return ceil(round(self.capacity_factor * n_tokens * self.top_k / self.n_experts, 9))

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        lead = x.shape[:-1]
        tokens = rearrange(x, "... d -> (...) d")  # (n, D)
        router_in = tokens
        if self.training and self.jitter > 0:
            router_in = tokens * torch.empty_like(tokens).uniform_(1 - self.jitter, 1 + self.jitter)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.router(router_in.float())  # (n, E)
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (n, k)
        weights = self.gate_weights(top_p)
        out, dropped = self.dispatch(tokens, top_i, weights)
        aux = {"routing": probs.reshape(*lead, -1), "expert_index": top_i.reshape(*lead, -1),
               "router_logits": logits.reshape(*lead, -1), "dropped": dropped}
        return out.reshape(x.shape), aux

    def gate_weights(self, top_p: Tensor) -> Tensor:
        """What each chosen expert's output is scaled by: its probability, or renormalised over the chosen ones.
        With one chosen expert the renormalised weight is exactly 1 and its gradient exactly 0, whereas p / p is 1
        only up to rounding and its gradient rounding noise. It stays in the graph (0 * p + 1), so the router still
        gets a (zero) gradient, as DDP expects of every parameter."""
        if not self.renormalize:
            return top_p
        if self.top_k == 1:
            return top_p * 0 + 1
        return top_p / top_p.sum(-1, keepdim=True)

    def dispatch(self, tokens: Tensor, expert_index: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (n, D), expert_index and weights (n, k) -> (sum of the weighted outputs (n, D), dropped fraction).
        Assignment a is token a // k's slot a % k."""
        n, k = expert_index.shape
        expert_of = expert_index.reshape(-1)  # (n k,)
        order = torch.argsort(expert_of, stable=True)  # grouped by expert, in token order within each group
        counts = assignment_counts(expert_of, self.n_experts)  # (E,)
        sizes = counts.tolist()  # the one host read: the experts' shares of the tokens are the matmuls' shapes
        capacity = self.capacity(n)
        if capacity is None:
            dropped = tokens.new_zeros((), dtype=torch.float32)
        else:  # each expert keeps the first `capacity` of its group
            order = torch.cat([group[:capacity] for group in order.split(sizes)])
            dropped = (n * k - counts.clamp(max=capacity).sum()) / max(n * k, 1)
            sizes = [min(size, capacity) for size in sizes]
        token_of = order // k  # (kept,)
        outputs = [expert(rows)[0] for expert, rows in zip(self.experts, tokens[token_of].split(sizes))]
        scaled = torch.cat(outputs) * weights.reshape(-1)[order].unsqueeze(-1)  # (kept, D)
        out = torch.zeros_like(tokens)
        return out.index_add_(0, token_of, scaled.to(out.dtype)), dropped.float()

    def no_weight_decay(self) -> set[str]:
        """The router: decay pulls its logits to zero and the routing to uniform (as RoutedFFN's gate)."""
        return {"router.weight"}


def assignment_counts(expert_index: Tensor, n_experts: int) -> Tensor:
    """How many of the choices in `expert_index` (any shape) went to each expert, (E,) int64. Counted on the
    device by a scatter: `torch.bincount` reads its input's maximum on the host (a GPU sync), fails inside a
    captured graph, and under vmap runs member by member."""
    flat = expert_index.reshape(-1)
    return flat.new_zeros(n_experts).scatter_add(0, flat, torch.ones_like(flat))


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = ["MATCHES", "MoEFFN", "assignment_counts"]

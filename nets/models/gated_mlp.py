"""Gated-depth MLP of the least-action study (its GatedNetwork): residual layers, each scaled by a gate.

    h_0 = W_in x                                             width w_0 = w_1
    per layer l = 1..L (width w_l):
        h = P_l h_{l-1}      P_l: an ungated linear map w_{l-1} -> w_l where the width changes, else the identity
        h_l = h + g_l * GELU(W_l h)                          W_l: w_l x w_l, g_l in [0, 1]
    logits = W_out h_L

Widths: `hidden_dim` and `n_layers` (every layer as wide), or `hidden_dims`, one width per layer (e.g.
[256, 128, 128, 64]), not both. Width changes sit outside the gated layers, so a closed gate (g_l = 0) still
means "layer l is not computed": the stream passes it unchanged, and every gated layer costs what closing it
saves, W_l's matmul: `layer_flops` = 2 w_l^2 FLOPs per example (the O(w_l) bias, GELU and gate ops left out).
The projections P_l run whatever the gates: a fixed cost, no gate's. With one width there are none, and the net
is the plain gated residual MLP.

Gate scope (`gate_scope`), what a gate's logit a_l is:
- `layer`: one learned number per layer, the same for every input (the least-action study's resolved choice,
  "per-layer: simpler, more interpretable to start"); `gates` is (n_layers,);
- `input`: a small gate network per layer reading the layer's input, a_l(h) = v_l . GELU(U_l h) + c_l (U_l:
  w_l -> `gate_hidden`), so each input gets its own gate at each layer and can skip layers another input uses (the
  study's "gate patterns per input" and "early exit"); `gates` is (batch, n_layers). v_l starts at zero and c_l at
  the logit of `gate_init`, so every input starts with the gate a `layer` net starts with. The gate networks run
  whatever their gates say: a fixed cost, as the projections, not in `layer_flops`.
Gate types (`gate_type`), applied to each logit:
- `sigmoid`: g = sigmoid(a_l), smooth;
- `gumbel`: binary concrete (Gumbel-sigmoid), g = sigmoid((a_l + log u - log(1-u)) / temperature) while
  training, sigmoid(a_l) in eval; lower temperatures give near-binary samples;
- `straight_through`: g = 1[sigmoid(a_l) > 0.5] forward, the sigmoid's gradient backward (values exactly 0/1).
A compute-cost regulariser (`regularizer=compute_*`) reads the gates and pushes layers off; with input gates it
counts the mean over examples.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from core.errors import require
from core.output import NetOutput

GATE_TYPES = ("sigmoid", "gumbel", "straight_through")
GATE_SCOPES = ("layer", "input")


def layer_widths(hidden_dim: int | None, n_layers: int | None, hidden_dims: Sequence[int] | None) -> list[int]:
    """One width per gated layer, from either `hidden_dims` or `hidden_dim` x `n_layers` (128 x 10 when all unset)."""
    if hidden_dims is None:
        hidden_dim = 128 if hidden_dim is None else hidden_dim
        n_layers = 10 if n_layers is None else n_layers
        require(isinstance(n_layers, int) and n_layers >= 1, "n_layers", n_layers, "an integer >= 1")
        require(isinstance(hidden_dim, int) and hidden_dim >= 1, "hidden_dim", hidden_dim, "a positive integer")
        return [hidden_dim] * n_layers
    widths = hidden_dims if isinstance(hidden_dims, (str, int, float)) else list(hidden_dims)  # Hydra: ListConfig
    require(hidden_dim is None and n_layers is None, "hidden_dims", widths,
            "null while hidden_dim or n_layers is set (set both to null to give one width per layer)",
            related=["hidden_dim", "n_layers"])
    require(isinstance(widths, list) and len(widths) >= 1 and all(isinstance(w, int) and w >= 1 for w in widths),
            "hidden_dims", widths, "a non-empty list of positive integers, one width per layer")
    return widths


class GateNetwork(nn.Module):
    """An input-dependent gate's logit: h (batch, width) -> v . GELU(U h) + c (batch,), starting at `logit` for
    every input (v = 0)."""

    def __init__(self, width: int, hidden: int, logit: float):
        super().__init__()
        self.hidden = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, logit)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(nn.functional.gelu(self.hidden(h))).squeeze(-1)


class GatedMLP(nn.Module):
    input_kind = "onehot"
    # Stated for the optimiser's weight-decay rules: the gates' logits are no bias, norm or embedding.
    parameter_roles = {"gate_logits": "weight"}

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int | None = None,
                 n_layers: int | None = None, hidden_dims: Sequence[int] | None = None, gate_type: str = "sigmoid",
                 gate_init: float = 1.0, temperature: float = 1.0, gate_scope: str = "layer", gate_hidden: int = 16):
        super().__init__()
        widths = layer_widths(hidden_dim, n_layers, hidden_dims)
        require(gate_type in GATE_TYPES, "gate_type", gate_type, ", ".join(GATE_TYPES))
        require(0 < gate_init <= 1, "gate_init", gate_init, "a number in (0, 1] (e.g. 1.0 or 0.5)")
        require(temperature > 0, "temperature", temperature, "a positive number")
        require(gate_scope in GATE_SCOPES, "gate_scope", gate_scope,
                "layer (one gate per layer) or input (a gate network per layer: one gate per example and layer)")
        require(isinstance(gate_hidden, int) and gate_hidden >= 1, "gate_hidden", gate_hidden, "an integer >= 1",
                related=["gate_scope"])
        self.gate_type, self.temperature, self.gate_scope = gate_type, temperature, gate_scope
        self.embed = nn.Linear(in_features, widths[0])
        self.projections = nn.ModuleList(
            nn.Identity() if w_in == w_out else nn.Linear(w_in, w_out, bias=False)
            for w_in, w_out in zip(widths[:1] + widths[:-1], widths)
        )
        self.layers = nn.ModuleList(nn.Linear(w, w) for w in widths)
        self.act = nn.GELU()
        self.head = nn.Linear(widths[-1], num_classes)
        p = min(gate_init, 0.99)  # a sigmoid reaches 1 only at infinity: 1.0 means 0.99
        logit = math.log(p / (1 - p))
        if gate_scope == "layer":
            self.gate_logits = nn.Parameter(torch.full((len(widths),), logit))
        else:
            self.gate_nets = nn.ModuleList(GateNetwork(w, gate_hidden, logit) for w in widths)
        flops = torch.tensor([2.0 * w * w for w in widths])
        self.register_buffer("layer_flops", flops, persistent=False)

    def gate_values(self, logits: Tensor) -> Tensor:
        """Gates from logits of any shape, by `gate_type`."""
        soft = torch.sigmoid(logits)
        if self.gate_type == "straight_through":
            return (soft > 0.5).float() + soft - soft.detach()
        if self.gate_type == "gumbel" and self.training:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            return torch.sigmoid((logits + u.log() - (-u).log1p()) / self.temperature)
        return soft

    def gates(self) -> Tensor:
        """(n_layers,): the per-layer gates (`gate_scope=layer`)."""
        return self.gate_values(self.gate_logits)

    def forward(self, x: Tensor) -> NetOutput:
        per_input = self.gate_scope == "input"
        gates = [] if per_input else self.gates()
        h = self.embed(x)
        for i, (projection, layer) in enumerate(zip(self.projections, self.layers)):
            h = projection(h)
            if per_input:
                gates.append(self.gate_values(self.gate_nets[i](h)))  # (batch,), from the layer's input
                h = h + gates[-1].unsqueeze(-1) * self.act(layer(h))
            else:
                h = h + gates[i] * self.act(layer(h))
        gates = torch.stack(gates, dim=-1) if per_input else gates
        return NetOutput(logits=self.head(h), gates=gates, layer_flops=self.layer_flops)

    def input_embedding(self) -> Tensor:
        """(in_features, first width): row i is the embedding of one-hot input i (bias left out)."""
        return self.embed.weight.T

    def no_weight_decay(self) -> set[str]:
        """The gates (their logits, or their networks): decay would pull them to 0.5, not off; the compute cost is
        their pressure (`optimizer.decay.declared=true` to test the seed's 'weight decay on gates' question)."""
        if self.gate_scope == "layer":
            return {"gate_logits"}
        return {name for name, _ in self.named_parameters() if name.startswith("gate_nets.")}

"""Gated-depth MLP of least-action learning (seed 001, GatedNetwork): residual layers, each scaled by a gate.

    h_0 = W_in x
    h_l = h_{l-1} + g_l * GELU(W_l h_{l-1})      g_l in [0, 1], one gate per layer
    logits = W_out h_L

Gate types (`gate_type`):
- `sigmoid`: g = sigmoid(a_l), smooth;
- `gumbel`: binary concrete (Gumbel-sigmoid), g = sigmoid((a_l + log u - log(1-u)) / temperature) while
  training, sigmoid(a_l) in eval; lower temperatures give near-binary samples;
- `straight_through`: g = 1[sigmoid(a_l) > 0.5] forward, the sigmoid's gradient backward (values exactly 0/1).
A compute-cost regulariser (`regularizer=compute_*`) reads the gates and pushes layers off.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nets.output import NetOutput
from runtime.errors import require

GATE_TYPES = ("sigmoid", "gumbel", "straight_through")


class GatedMLP(nn.Module):
    input_kind = "onehot"

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 128, n_layers: int = 10,
                 gate_type: str = "sigmoid", gate_init: float = 1.0, temperature: float = 1.0):
        super().__init__()
        require(isinstance(n_layers, int) and n_layers >= 1, "n_layers", n_layers, "an integer >= 1")
        require(isinstance(hidden_dim, int) and hidden_dim >= 1, "hidden_dim", hidden_dim, "a positive integer")
        require(gate_type in GATE_TYPES, "gate_type", gate_type, ", ".join(GATE_TYPES))
        require(0 < gate_init <= 1, "gate_init", gate_init, "a number in (0, 1] (e.g. 1.0 or 0.5)")
        require(temperature > 0, "temperature", temperature, "a positive number")
        self.gate_type, self.temperature = gate_type, temperature
        self.embed = nn.Linear(in_features, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(n_layers))
        self.act = nn.GELU()
        self.head = nn.Linear(hidden_dim, num_classes)
        p = min(gate_init, 0.99)  # a sigmoid reaches 1 only at infinity: 1.0 means 0.99
        self.gate_logits = nn.Parameter(torch.full((n_layers,), math.log(p / (1 - p))))
        self.register_buffer("flops", torch.full((n_layers,), float(hidden_dim * hidden_dim)), persistent=False)

    def gates(self) -> Tensor:
        soft = torch.sigmoid(self.gate_logits)
        if self.gate_type == "straight_through":
            return (soft > 0.5).float() + soft - soft.detach()
        if self.gate_type == "gumbel" and self.training:
            u = torch.rand_like(self.gate_logits).clamp(1e-6, 1 - 1e-6)
            return torch.sigmoid((self.gate_logits + u.log() - (-u).log1p()) / self.temperature)
        return soft

    def forward(self, x: Tensor) -> NetOutput:
        gates = self.gates()
        h = self.embed(x)
        for gate, layer in zip(gates, self.layers):
            h = h + gate * self.act(layer(h))
        return NetOutput(logits=self.head(h), gates=gates, layer_flops=self.flops / self.flops.max())

    def input_embedding(self) -> Tensor:
        """(in_features, hidden_dim): row i is the embedding of one-hot input i (bias left out)."""
        return self.embed.weight.T

    def no_weight_decay(self) -> set[str]:
        """The gates: decay would pull them to 0.5, not off; the compute cost is their pressure
        (`optimizer.decay.declared=true` to test the seed's 'weight decay on gates' question)."""
        return {"gate_logits"}

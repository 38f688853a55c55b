"""The baseline MLP of the grokking literature: one-hot (a, b) in, GELU hidden layers, p logits out."""
from __future__ import annotations

from torch import Tensor, nn

from core.errors import require
from core.output import NetOutput


class MLP(nn.Module):
    """`n_hidden` GELU layers of width `hidden_dim` on a one-hot input of `in_features` dims."""

    input_kind = "onehot"

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 256, n_hidden: int = 2):
        super().__init__()
        require(isinstance(hidden_dim, int) and hidden_dim > 0, "hidden_dim", hidden_dim, "a positive integer")
        require(isinstance(n_hidden, int) and n_hidden >= 1, "n_hidden", n_hidden, "an integer >= 1")
        dims = [in_features] + [hidden_dim] * n_hidden
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: Tensor) -> NetOutput:
        # x: (batch, in_features) one-hot -> logits (batch, num_classes)
        return NetOutput(logits=self.head(self.hidden(x)))

    def input_embedding(self) -> Tensor:
        """(in_features, hidden_dim): row i is the first layer's vector for one-hot input i (bias left out)."""
        return self.hidden[0].weight.T

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond the generic rule (biases): the first layer of a one-hot MLP is decayed, as in the seeds."""
        return set()

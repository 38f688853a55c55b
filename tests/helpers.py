"""Test-only pieces that configs can point `_target_` at."""
from __future__ import annotations

import torch

from lightning_modules.regularizers import Regularizer


class NaNAfter(Regularizer):
    """Contributes 0 for `after` training calls, then NaN: a run that diverges at a known step."""

    def __init__(self, weight: float = 1.0, after: int = 25):
        super().__init__(weight)
        self.after, self.calls = after, 0

    def term(self, output):
        self.calls += 1
        value = 0.0 if self.calls <= self.after else float("nan")
        return torch.tensor(value, device=output.logits.device)

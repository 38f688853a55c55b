"""Spectral penalty (the least-action study, `--lambda-spectral`): prefer output functions on Z_p x Z_p that are smooth,
i.e. whose energy sits at low frequencies.

Definition. Let L(a, b) in R^C be the net's answer logits on the whole grid of the (single) operation, centred over
classes (L - mean_c L, so the softmax-invariant shift does not count). With F(k1, k2) = DFT_2D of L over (a, b),
|k| = min(k, p - k) the circular frequency and m = (p - 1) // 2 the highest one,

    term = sum_k w(k) |F(k)|^2 / sum_k |F(k)|^2,      w(k1, k2) = (|k1|^2 + |k2|^2) / (2 m^2)   in [0, 1],

the energy-weighted mean squared frequency: 0 for a function of neither a nor b, 1 when all energy is at the
highest frequencies. For L = cos(2π k (a + b - c) / p) it is (k / m)^2.

Note the prior it encodes: networks that grok modular addition use a few key frequencies that need not be low
(Nanda et al. 2023), so this penalty is a hypothesis to test, not a known accelerator. Each training step also
evaluates the net on all p^2 inputs (single-op data with every b, so not `div`): a full-grid forward extra.
Only modular arithmetic has that grid (`datamodules.task.modular_structure`); on any other task the run is refused
at fit start (a penalty cannot stand aside as a diagnostic does: it would change what is trained).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from core.errors import ConfigError, require
from core.output import NetOutput
from datamodules.batch import answer_columns
from datamodules.task import modular_structure
from regularizers.base import Regularizer


def frequency_weights(p: int, device: torch.device | str | None = None) -> Tensor:
    """w(k1, k2) on the (p, p) DFT grid, as in the module docstring, built on `device` (no copy from the host)."""
    k = torch.arange(p, device=device)
    k = torch.minimum(k, p - k).float()
    m = (p - 1) // 2
    return (k[:, None] ** 2 + k[None, :] ** 2) / (2 * m**2)


def spectral_term(logits: Tensor, p: int, weights: Tensor | None = None) -> Tensor:
    """logits: (p * p, C) in a-major order -> the mean squared frequency of the centred logits. `weights`:
    `frequency_weights(p)` on the logits' device (built here when not given).

    The spectrum is taken in float32 at least: under bf16 autocast the logits are bf16, which CUDA's FFT refuses
    (and whose energies would be rounded to 3 digits)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    centred = logits - logits.mean(-1, keepdim=True)
    energy = torch.fft.fft2(rearrange(centred, "(a b) c -> c a b", a=p)).abs().square().sum(0)  # (p, p)
    weights = frequency_weights(p, energy.device) if weights is None else weights
    return (weights * energy).sum() / energy.sum().clamp_min(1e-12)


class SpectralPenalty(Regularizer):
    def __init__(self, weight: float):
        super().__init__(weight)
        self.module = None

    def bind(self, module) -> None:
        data = module.trainer.datamodule
        structure = modular_structure(data)
        if structure is None:
            raise ConfigError("data", type(data).__name__, "modular arithmetic with regularizer.spectral (the "
                                                           "penalty reads the net on the Z_p x Z_p grid, which this "
                                                           "task lacks)")
        ops = list(structure.operations)
        require(len(ops) == 1 and ops[0] != "div", "data.operations", ops,
                "one operation defined for every (a, b) (not div) for the spectral penalty")
        self.module, self.p = module, structure.p
        self.grid, self.weights = structure.grid, frequency_weights(structure.p, structure.grid.inputs.device)
        # one answer token per equation, the same column in every row: read by index (a CUDA graph can capture it)
        answer_mask = self.grid.answer_mask
        self.answer_from_end = answer_mask.shape[1] - int(answer_columns(answer_mask)[0])

    def term(self, output: NetOutput) -> Tensor:
        require(self.module is not None, "regularizer.spectral", "unbound", "a penalty bound by the module at fit start")
        grid = self.grid
        if grid.inputs.device != self.module.device:  # the first step: the grid and the weights, once per device
            self.grid = grid = type(grid)(*(t.to(self.module.device) for t in grid))
            self.weights = frequency_weights(self.p, self.module.device)
        logits = self.module.net(grid.inputs).logits
        if logits.ndim == 3:  # a sequence net: the answer position's logits
            logits = logits[:, -self.answer_from_end]
        return spectral_term(logits, self.p, self.weights)  # logits: (p * p, classes), a-major

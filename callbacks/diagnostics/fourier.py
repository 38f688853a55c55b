"""Fourier diagnostic of modular arithmetic (Nanda et al. 2023, "Progress measures for grokking").

A net that has grokked addition mod p represents each residue by a few frequencies w_k = 2πk/p: its input
embedding, seen as p vectors over Z_p, has its energy in a handful of Fourier frequencies ("key frequencies").
`FourierSpectrum` tracks that spectrum during training: how concentrated it is (`fourier/gini`,
`fourier/top<k>_fraction`), which frequencies lead (`fourier/key_freq_<i>`), and, for 1-layer transformers on
addition, Nanda et al.'s two progress measures (`fourier/restricted_loss`, `fourier/excluded_loss`).

Conventions used throughout:
- Frequencies are k = 0 (the constant), 1, ..., p // 2; for an even p the last one (k = p/2) has a cosine only.
- "Energy" is a squared norm. Every fraction here is a fraction of energy, never of norm.
- Logit tables are indexed [a, b, c]: operands a, b and answer class c, shape (p, p, p).
"""
from __future__ import annotations

import math
from typing import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from callbacks.diagnostics.base import Diagnostic, eval_forward, new_figure, publish_figure
from core.errors import require
from datamodules.task import ModularStructure, at_answers, modular_structure
from nets.models.transformer import Transformer

PROGRESS_MEASURES = ("auto", "on", "off")


# ---------------------------------------------------------------------------------------------------------------
# Pure functions (torch only)
# ---------------------------------------------------------------------------------------------------------------

def n_frequencies(p: int) -> int:
    """How many frequencies Z_p has, the constant included: p // 2 + 1 (= (p + 1) / 2 for odd p)."""
    return p // 2 + 1


def fourier_basis(p: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The real orthonormal Fourier basis of Z_p, one basis vector per row, shape (p, p).

    Rows: the constant 1/sqrt(p), then cos(w_k x), sin(w_k x) for k = 1..(p-1)//2, each scaled to unit norm
    (sqrt(2/p)), then for even p the alternating cos(πx)/sqrt(p). Real and orthonormal, so `basis @ v` gives the
    coefficients of a function v on Z_p and `basis.T @ coefficients` gives it back.
    """
    x = torch.arange(p, device=device, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), device=device, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        angle = 2 * math.pi * k * x / p
        rows += [torch.cos(angle) * math.sqrt(2 / p), torch.sin(angle) * math.sqrt(2 / p)]
    if p % 2 == 0:
        rows.append(torch.cos(math.pi * x) / math.sqrt(p))
    return torch.stack(rows).to(dtype)


def frequency_energies(embedding: Tensor) -> Tensor:
    """Energy (squared norm) of a (p, d) embedding in each frequency k = 0..p//2, shape (p//2 + 1,).

    Each of the d columns is a function on Z_p; its Fourier coefficients are squared and summed over the columns,
    the cosine and sine coefficients of a frequency pooled. The energies add up to |embedding|_F^2 (Parseval).
    """
    p = embedding.shape[0]
    coefficients = fourier_basis(p, embedding.device, embedding.dtype) @ embedding  # (p basis rows, d)
    row_energy = coefficients.pow(2).sum(dim=1)  # (p,)
    energy = torch.zeros(n_frequencies(p), device=embedding.device, dtype=embedding.dtype)
    frequency_of_row = (torch.arange(p, device=embedding.device) + 1) // 2  # 0, 1, 1, 2, 2, ... (p/2 once)
    return energy.index_add_(0, frequency_of_row, row_energy)


def frequency_norms(embedding: Tensor) -> Tensor:
    """Norm of a (p, d) embedding in each frequency k = 0..p//2: sqrt(|cos_k|^2 + |sin_k|^2) over the columns.

    Shape (p//2 + 1,), i.e. ((p + 1) // 2,) for odd p. The square root of `frequency_energies`.
    """
    return frequency_energies(embedding).sqrt()


def _candidates(norms: Tensor, include_constant: bool) -> tuple[Tensor, Tensor]:
    """(frequencies, energies) of the frequencies a ranking considers: all, or all but k = 0."""
    frequencies = torch.arange(len(norms), device=norms.device)
    start = 0 if include_constant else 1
    return frequencies[start:], norms[start:].pow(2)


def key_frequencies(norms: Tensor, k: int, include_constant: bool = False) -> list[int]:
    """The k frequencies of largest norm, strongest first (fewer when fewer exist); k = 0 is left out unless
    `include_constant`. Ties go to the lower frequency."""
    frequencies, energies = _candidates(norms, include_constant)
    order = torch.sort(-energies, stable=True).indices[:k]
    return frequencies[order].tolist()


def top_k_fraction(norms: Tensor, k: int, include_constant: bool = False) -> float:
    """Fraction of energy (squared norm) held by the k strongest frequencies, out of the energy of all the
    frequencies considered (k = 0 left out unless `include_constant`). 1.0 when k covers them all; 0.0 for a
    zero spectrum."""
    _, energies = _candidates(norms, include_constant)
    total = energies.sum()
    if total <= 0:
        return 0.0
    return float(energies.topk(min(k, len(energies))).values.sum() / total)


def gini(values: Tensor) -> float:
    """Gini coefficient of non-negative values: 0 when all are equal, 1 - 1/n when one holds everything.

    G = sum_i (2i - n - 1) x_(i) / (n sum x), with x_(1) <= ... <= x_(n) sorted ascending; 0 for all zeros.
    """
    x = values.flatten().double().sort().values
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    rank = torch.arange(1, n + 1, device=x.device, dtype=x.dtype)
    return float(((2 * rank - n - 1) * x).sum() / (n * total))


def sum_directions(p: int, frequencies: Sequence[int], device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Unit directions cos(w_k(a+b)) and sin(w_k(a+b)) on the (a, b) grid for each k, shape (2 * len, p, p).

    These span, for every answer c, the terms cos(w_k(a+b-c)) = cos(w_k(a+b))cos(w_k c) + sin(w_k(a+b))sin(w_k c)
    and sin(w_k(a+b-c)); they are orthonormal over the grid for distinct 0 < k < p/2. A direction that vanishes
    (sin at k = p/2 for even p) is left out.
    """
    a = torch.arange(p, device=device, dtype=torch.float64)
    total = a[:, None] + a[None, :]  # (p, p): a + b
    directions = []
    for k in frequencies:
        angle = 2 * math.pi * k * total / p
        for direction in (torch.cos(angle), torch.sin(angle)):
            norm = direction.norm()
            if norm > 1e-6:
                directions.append(direction / norm)
    if not directions:
        return torch.zeros(0, p, p, device=device, dtype=dtype)
    return torch.stack(directions).to(dtype)


def key_frequency_component(logits: Tensor, frequencies: Sequence[int]) -> Tensor:
    """The part of a (p, p, p) logit table [a, b, c] that the key frequencies explain, same shape.

    For every answer c, the logits over the (a, b) grid are projected onto the directions cos(w_k(a+b)),
    sin(w_k(a+b)) of each key frequency k (`sum_directions`). This holds all of the table's cos(w_k(a+b-c)) and
    sin(w_k(a+b-c)) terms, the 2D Fourier terms of Nanda et al.'s algorithm.
    """
    directions = sum_directions(logits.shape[0], frequencies, logits.device, logits.dtype)  # (n, p, p)
    coefficients = einsum(directions, logits, "n a b, a b c -> n c")
    return einsum(directions, coefficients, "n a b, n c -> a b c")


def addition_targets(p: int, device: torch.device | str | None = None) -> Tensor:
    """(p, p) table of the answers (a + b) mod p."""
    a = torch.arange(p, device=device)
    return (a[:, None] + a[None, :]) % p


def restricted_loss(logits: Tensor, frequencies: Sequence[int]) -> float:
    """Nanda et al.'s restricted loss: cross-entropy over all p^2 pairs of the logits restricted to the key
    frequencies.

    Restricted logits = `key_frequency_component(logits, frequencies)` + the mean of each answer's logit over the
    grid (the constant term, which the projection drops and the paper's bias correction puts back). It falls
    with the test loss once the Fourier algorithm carries the answer: the algorithm alone generalises.
    logits: (p, p, p) [a, b, c] for addition mod p.
    """
    p = logits.shape[0]
    restricted = key_frequency_component(logits, frequencies) + logits.mean(dim=(0, 1), keepdim=True)
    targets = addition_targets(p, logits.device)
    return float(F.cross_entropy(rearrange(restricted, "a b c -> (a b) c"), targets.flatten()))


def excluded_loss(logits: Tensor, frequencies: Sequence[int], train_mask: Tensor) -> float:
    """Nanda et al.'s excluded loss: cross-entropy on the training pairs of the logits with every key
    frequency's component removed (`logits - key_frequency_component(logits, frequencies)`, no bias correction).

    It rises during circuit formation, while training loss stays low: the net comes to rely on the Fourier
    algorithm to fit its training data, not on memorisation. When the key frequencies are all the logits hold
    it is ln p (uniform). logits: (p, p, p) [a, b, c]; train_mask: (p, p) bool, True for training pairs.
    """
    p = logits.shape[0]
    excluded = logits - key_frequency_component(logits, frequencies)
    targets = addition_targets(p, logits.device)
    return float(F.cross_entropy(excluded[train_mask], targets[train_mask]))


# ---------------------------------------------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------------------------------------------

class FourierSpectrum(Diagnostic):
    """Spectrum of the residue embeddings every `every_n_steps` steps; Nanda et al.'s progress measures.

    Needs modular arithmetic (`datamodules.task.modular_structure`): on any other task it stands aside.
    The embedding is the net's `input_embedding()` restricted to the residues. One-hot nets have one block of p
    rows per operand (rows 0..p-1 for a, p..2p-1 for b); the two are pooled into one spectrum by adding their
    energies (the spectrum of the (p, 2d) matrix [E_a | E_b]), since both operands play the same role.
    Token nets: token ids 0..p-1. Nets without `input_embedding` are skipped.

    Logged (energy = squared norm, constant term k = 0 left out of rankings and fractions):
    `fourier/gini` (Gini of the energies of k = 1..p//2), `fourier/top<top_k>_fraction` (their share held by
    the top_k strongest), `fourier/key_freq_<i>` (the i-th strongest frequency, i = 0..top_k-1), and
    `fourier/restricted_loss`, `fourier/excluded_loss` computed with those top_k frequencies as the key ones.

    top_k: how many key frequencies (Nanda et al.'s model uses about 5).
    progress_measures: `auto` computes restricted/excluded loss for 1-layer transformers on the tokens format of
        addition alone, and skips them otherwise; `on` computes them for any token net and rejects other modular
        data; `off` never computes them.
    """

    name = "fourier"

    def __init__(self, every_n_steps: int = 500, plot_every_n_steps: int | None = None, plot: bool = True,
                 top_k: int = 5, progress_measures: str = "auto"):
        super().__init__(every_n_steps, plot_every_n_steps, plot)
        require(isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1, "top_k", top_k,
                "an integer >= 1")
        require(progress_measures in PROGRESS_MEASURES, "progress_measures", progress_measures,
                ", ".join(PROGRESS_MEASURES))
        self.top_k = top_k
        self.progress_measures = progress_measures
        self.structure: ModularStructure | None = None
        self._with_progress_measures = False

    # -- which measures apply ---------------------------------------------------------------------------------

    def requirements(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        self.structure = modular_structure(trainer.datamodule)
        if self.structure is None:
            return "needs modular-arithmetic structure: data.p and its Z_p grid; this task has none"
        return None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        structure = self.structure
        if structure is None:
            self._with_progress_measures = False
            return
        on_addition_tokens = structure.format == "tokens" and list(structure.operations) == ["add"]
        net = pl_module.net
        if self.progress_measures == "on":
            require(on_addition_tokens, "progress_measures", "on",
                    f"auto or off unless data.format=tokens and data.operations=[add] "
                    f"(got {structure.format}, {list(structure.operations)})")
            require(getattr(net, "input_kind", None) == "tokens", "progress_measures", "on",
                    f"auto or off for a net that reads one-hot inputs ({type(net).__name__})")
        one_layer_transformer = isinstance(net, Transformer) and len(net.blocks) == 1
        self._with_progress_measures = self.progress_measures == "on" or (
            self.progress_measures == "auto" and on_addition_tokens and one_layer_transformer)

    @staticmethod
    def residue_embedding(net: torch.nn.Module, p: int) -> Tensor | None:
        """(p, width) rows of the residues, both operands side by side for one-hot nets; None without one."""
        if not hasattr(net, "input_embedding"):
            return None
        embedding = net.input_embedding().detach().float()
        if getattr(net, "input_kind", "tokens") == "onehot":
            return torch.cat([embedding[:p], embedding[p : 2 * p]], dim=1)  # (p, 2 * width): [E_a | E_b]
        return embedding[:p]

    # -- measuring ----------------------------------------------------------------------------------------------

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        embedding = None if self.structure is None else self.residue_embedding(pl_module.net, self.structure.p)
        if embedding is None:
            self.stand_aside(trainer, "the net has no input embedding indexed by residue to read")
            return {}
        energies = frequency_energies(embedding)
        norms = energies.sqrt()
        keys = key_frequencies(norms, self.top_k)
        metrics = {
            "fourier/gini": gini(energies[1:]),
            f"fourier/top{self.top_k}_fraction": top_k_fraction(norms, self.top_k),
            **{f"fourier/key_freq_{i}": float(k) for i, k in enumerate(keys)},
        }
        if self._with_progress_measures:
            metrics.update(self.progress_measures_now(trainer, pl_module, keys))
        self.history.append({"step": trainer.global_step, "energy": energies.cpu().tolist(), "key_freqs": keys})
        return metrics

    def progress_measures_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                              keys: Sequence[int]) -> dict[str, float]:
        """Restricted and excluded loss of the net's answer logits over the whole (a, b) grid."""
        structure = self.structure
        p, grid = structure.p, structure.grid  # a-major: row a * p + b holds [a, OP, b, =] (or [a, b, =])
        output = eval_forward(pl_module, grid.inputs.to(pl_module.device))
        logits = at_answers(output.logits, grid.answer_mask)[:, :p].float()
        logits = rearrange(logits, "(a b) c -> a b c", a=p, b=p)
        train_inputs = trainer.datamodule.examples("train", len(structure.all.targets)).inputs  # the whole split
        train_mask = torch.zeros(p, p, dtype=torch.bool, device=logits.device)
        a_column, b_column = structure.operand_columns
        train_mask[train_inputs[:, a_column].to(logits.device), train_inputs[:, b_column].to(logits.device)] = True
        return {
            "fourier/restricted_loss": restricted_loss(logits, keys),
            "fourier/excluded_loss": excluded_loss(logits, keys, train_mask),
        }

    # -- plotting -----------------------------------------------------------------------------------------------

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        self.plot_spectrum(trainer)
        self.plot_evolution(trainer)

    def plot_spectrum(self, trainer: pl.Trainer) -> None:
        last = self.history[-1]
        norms = torch.tensor(last["energy"]).sqrt()
        frequencies = range(len(norms))
        colors = ["tab:orange" if k in last["key_freqs"] else "tab:blue" for k in frequencies]
        fig = new_figure(max(6.0, 0.12 * len(norms) + 2), 3.5)
        ax = fig.add_subplot()
        ax.bar(frequencies, norms.numpy(), color=colors)
        ax.set_xlabel("frequency k (w_k = 2πk/p)")
        ax.set_ylabel("norm of the residue embedding")
        ax.set_title(f"step {last['step']}: Fourier spectrum (orange: top {self.top_k}, k = 0 is the constant)")
        publish_figure(trainer, "fourier/spectrum", fig)

    def plot_evolution(self, trainer: pl.Trainer) -> None:
        steps = [h["step"] for h in self.history]
        energy = torch.tensor([h["energy"] for h in self.history]).T  # (frequencies, steps)
        share = energy / energy.sum(dim=0, keepdim=True).clamp_min(1e-30)
        fig = new_figure(7.0, 4.0)
        ax = fig.add_subplot()
        image = ax.pcolormesh(steps, range(energy.shape[0]), share.numpy(), shading="nearest", cmap="viridis")
        fig.colorbar(image, ax=ax, label="share of the embedding's energy")
        ax.set_xlabel("step")
        ax.set_ylabel("frequency k")
        ax.set_title("Fourier spectrum of the residue embedding during training")
        publish_figure(trainer, "fourier/spectrum_evolution", fig)


__all__ = [
    "FourierSpectrum", "addition_targets", "excluded_loss", "fourier_basis", "frequency_energies",
    "frequency_norms", "gini", "key_frequencies", "key_frequency_component", "n_frequencies", "restricted_loss",
    "sum_directions", "top_k_fraction",
]

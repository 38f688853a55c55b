"""Loss curvature along training: gradient norm, Hessian trace, top Hessian eigenvalue, empirical Fisher trace,
and the input-output Jacobian norm (the least-action study's "Curvature metrics (Jacobian, Hessian, gradient norm,
Fisher)").

Grokking is often read as a move from a sharp memorising solution to a flatter generalising one; these four
numbers track that on a fixed subset of the training split. Everything is matrix-free: the Hessian is only touched
through Hessian-vector products (double backward), the Fisher through per-example gradients (torch.func).

The pure functions take `loss_fn`, a closure that recomputes the scalar loss from the current parameters, and
`params`, the tensors to differentiate by. They never write `.grad` and never draw from the global RNG.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from callbacks.diagnostics.base import Diagnostic, new_figure, publish_figure
from core.errors import require
from datamodules.batch import Batch
from lightning_modules.answers import aligned_logits, task_loss
from nets.kernels.fla_choice import reference_form

Vectors = list[Tensor]  # one tensor per parameter, same shapes: a point of parameter space

QUANTITIES = ("grad_norm", "hessian_trace", "top_eigenvalue", "fisher_trace", "jacobian_norm")
SIGNED = ("hessian_trace", "top_eigenvalue")


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def hvp_operator(loss_fn: Callable[[], Tensor],
                 params: Sequence[Tensor]) -> tuple[Vectors, Callable[[Vectors], Vectors]]:
    """(gradient, v -> H v): the loss and its gradient graph are built once and reused for every product. The
    loss is computed in the nets' reference forms (`nets.kernels.fla_choice.reference_form`): fused kernels whose backward
    is not differentiable would silently drop their second-order terms."""
    params = list(params)
    with reference_form():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True, materialize_grads=True)

    def hvp(vectors: Vectors) -> Vectors:
        # a gradient that does not depend on the parameters (a loss linear in them) contributes nothing
        live = [(g, v) for g, v in zip(grads, vectors) if g.requires_grad]
        if not live:
            return [torch.zeros_like(p) for p in params]
        return list(torch.autograd.grad([g for g, _ in live], params, grad_outputs=[v for _, v in live],
                                        retain_graph=True, materialize_grads=True))

    return [g.detach() for g in grads], hvp


def _local_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def rademacher_like(params: Sequence[Tensor], generator: torch.Generator) -> Vectors:
    """Independent ±1 entries, drawn on the generator's device and moved to each parameter's."""
    return [(torch.randint(0, 2, p.shape, generator=generator, device=generator.device) * 2 - 1).to(p)
            for p in params]


def hutchinson_trace(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], n_samples: int = 16,
                     generator: torch.Generator | None = None) -> float:
    """Hutchinson's estimate of tr(H): the mean of vᵀHv over `n_samples` Rademacher probes v.

    Unbiased; with Rademacher probes one sample's variance is 2·Σ_{i≠j} H_ij², so a diagonal H is exact.
    `generator` (default: a fresh one seeded 0) draws the probes; the global RNG is left alone.
    """
    require(isinstance(n_samples, int) and n_samples >= 1, "n_samples", n_samples, "an integer >= 1")
    generator = _local_generator(generator)
    params = list(params)
    _, hvp = hvp_operator(loss_fn, params)
    total = 0.0
    for _ in range(n_samples):
        v = rademacher_like(params, generator)
        total += float(dot(v, hvp(v)))
    return total / n_samples


def top_eigenvalue(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], iters: int = 50, tol: float = 1e-3,
                   generator: torch.Generator | None = None) -> float:
    """The Hessian's eigenvalue of largest MAGNITUDE, by power iteration on Hessian-vector products.

    Power iteration converges to the eigenvector whose |λ| is largest, so away from a minimum a large negative
    eigenvalue can be the answer; its sign is kept (the Rayleigh quotient vᵀHv of the unit iterate). Stops when
    the estimate changes by less than `tol` relative to its size, or after `iters` products. Convergence goes
    as (|λ₂|/|λ₁|)^k, so close top eigenvalues need more iterations.
    """
    require(isinstance(iters, int) and iters >= 1, "iters", iters, "an integer >= 1")
    require(tol >= 0, "tol", tol, "a number >= 0")
    generator = _local_generator(generator)
    params = list(params)
    _, hvp = hvp_operator(loss_fn, params)
    v = [torch.randn(p.shape, generator=generator, device=generator.device).to(p) for p in params]
    norm = math.sqrt(float(dot(v, v)))
    v = [x / norm for x in v]
    estimate: float | None = None
    for _ in range(iters):
        hv = hvp(v)
        rayleigh = float(dot(v, hv))
        norm = math.sqrt(float(dot(hv, hv)))
        if norm == 0.0:  # v lies in the null space: the Hessian is zero along everything reached so far
            return 0.0
        v = [x / norm for x in hv]
        converged = estimate is not None and abs(rayleigh - estimate) <= tol * abs(rayleigh)
        estimate = rayleigh
        if converged:
            break
    return estimate


def fisher_trace(logits_fn: Callable[[Mapping[str, Tensor], Tensor], Tensor], params: Mapping[str, Tensor],
                 inputs: Tensor, targets: Tensor, chunk_size: int = 64, answer_mask: Tensor | None = None) -> float:
    """Trace of the EMPIRICAL Fisher: mean over examples of ||∇_θ log p(y_i | x_i)||², with the TRUE labels y_i.

    (The true Fisher would sample y from the model's own softmax instead; the empirical one is what the training
    gradients are made of.) `logits_fn(params, inputs)` returns (N, classes) logits for a batch, with `targets` (N,)
    class ids; or (N, T, classes) with `targets` (N, T) and `answer_mask` (N, T), where the answer is several tokens
    and log p(y_i | x_i) sums over its positions. Per-example gradients come from torch.func (vmap of grad),
    `chunk_size` examples at a time so memory stays at chunk_size × n_params.
    """
    require(isinstance(chunk_size, int) and chunk_size >= 1, "chunk_size", chunk_size, "an integer >= 1")
    params = {name: p.detach() for name, p in params.items()}
    if answer_mask is None:
        answer_mask = torch.ones_like(targets, dtype=torch.bool)

    def nll(params: Mapping[str, Tensor], x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        # one example: x without its batch axis, y a class id or (T,) of them
        logits = logits_fn(params, x[None])[0]
        if y.ndim == 0:
            return F.cross_entropy(logits[None], y[None])
        return (F.cross_entropy(logits, y, reduction="none") * mask.to(logits.dtype)).sum()

    per_example_grads = torch.func.vmap(torch.func.grad(nll), in_dims=(None, 0, 0, 0))
    total = inputs.new_zeros((), dtype=torch.float64)
    for start in range(0, len(inputs), chunk_size):
        chunk = slice(start, start + chunk_size)
        grads = per_example_grads(params, inputs[chunk], targets[chunk], answer_mask[chunk])
        total += sum(g.flatten(1).pow(2).sum() for g in grads.values()).double()  # Σ over chunk and params
    return float(total) / len(inputs)


def jacobian_norm(net: torch.nn.Module, inputs: Tensor, n_targets: int) -> float | None:
    """The mean over examples of ||J_i||_F, J_i = d z_i / d x_i: z_i the example's answer logits (its last
    `n_targets` positions x classes), x_i its input as the net reads it:
    - a one-hot net (`input_kind = "onehot"`): the one-hot vector itself, so J_i is the input-output Jacobian;
    - a token net: the output of its `token_embedding` (every position's token embedding, before positions are
      added; the sum's Jacobian is the same), so J_i is d logits / d input embedding.
    None for a net that is neither. Exact, not estimated: one backward pass per output coordinate (n_targets x
    classes), each giving every example's row at once, since in eval mode an example's logits depend on its own
    input only. How sharply the function turns with its input: a smooth (generalising) solution should have a
    smaller one than a memorising one.
    """
    dtype = next(net.parameters()).dtype
    if getattr(net, "input_kind", None) == "onehot":
        x = inputs.to(dtype).detach().requires_grad_(True)
        logits = aligned_logits(net(x), n_targets)
    elif isinstance(getattr(net, "token_embedding", None), torch.nn.Module):
        read: list[Tensor] = []

        def as_leaf(module, args, output):  # the embedding, as the leaf the Jacobian is taken by
            read.append(output.detach().requires_grad_(True))
            return read[-1]

        handle = net.token_embedding.register_forward_hook(as_leaf)
        try:
            logits = aligned_logits(net(inputs), n_targets)
        finally:
            handle.remove()
        (x,) = read
    else:
        return None
    flat = logits.flatten(1)  # (N, n_targets * classes)
    squared = torch.zeros(len(flat), dtype=torch.float64, device=flat.device)
    for k in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, k].sum(), x, retain_graph=k + 1 < flat.shape[1])
        squared += row.flatten(1).double().pow(2).sum(1)
    return float(squared.sqrt().mean())


class Curvature(Diagnostic):
    """Logs `curvature/{grad_norm,hessian_trace,top_eigenvalue,fisher_trace}` of the task loss on the same
    `subset_size` training examples (the task's `examples("train", subset_size)`: works on any task), every
    `every_n_steps` steps, and draws them over steps (`curvature/history`). The Fisher is that of the answer
    (`Batch.answer_mask`), the loss that of the positions the task trains on.

    Measured in eval mode (deterministic gates, no dropout) with the task loss the module trains on (no
    regularisers), attention on the math kernel (the only one with a double backward) and Gated DeltaNet in its
    PyTorch form (flash-linear-attention's backward is not differentiable); the module's `.grad`s, its
    train/eval mode and the global RNG are left as they were, so training is not perturbed. Probes come from a
    generator seeded with `seed` + step: a rerun measures the same numbers.
    Cost per measurement: about 1 + n_probes + power_iters double-backward passes plus one per-example pass.
    With `jacobian` (on by default) it also logs `curvature/jacobian_norm` (`jacobian_norm`: answer positions x
    classes backward passes; off for large vocabularies) on nets that have one.
    """

    name = "curvature"

    def __init__(self, every_n_steps: int = 1000, subset_size: int = 512, n_probes: int = 16,
                 power_iters: int = 100, power_tol: float = 1e-4, fisher_chunk_size: int = 64, seed: int = 0,
                 plot_every_n_steps: int | None = None, plot: bool = True, jacobian: bool = True):
        super().__init__(every_n_steps, plot_every_n_steps=plot_every_n_steps, plot=plot)
        require(isinstance(subset_size, int) and subset_size >= 1, "subset_size", subset_size, "an integer >= 1")
        require(isinstance(n_probes, int) and n_probes >= 1, "n_probes", n_probes, "an integer >= 1")
        require(isinstance(power_iters, int) and power_iters >= 1, "power_iters", power_iters, "an integer >= 1")
        require(isinstance(power_tol, (int, float)) and power_tol >= 0, "power_tol", power_tol, "a number >= 0")
        require(isinstance(fisher_chunk_size, int) and fisher_chunk_size >= 1, "fisher_chunk_size",
                fisher_chunk_size, "an integer >= 1")
        require(isinstance(jacobian, bool), "jacobian", jacobian, "true or false")
        self.subset_size, self.n_probes, self.seed, self.jacobian = subset_size, n_probes, seed, jacobian
        self.power_iters, self.power_tol, self.fisher_chunk_size = power_iters, power_tol, fisher_chunk_size

    def subset(self, trainer: pl.Trainer, device: torch.device | None = None) -> Batch:
        """The fixed training subset the numbers are measured on (on `device` when given)."""
        subset = trainer.datamodule.examples("train", self.subset_size)
        return subset if device is None else Batch(*(t.to(device) for t in subset))

    def compute(self, pl_module: pl.LightningModule, batch: Batch, step: int = 0) -> dict[str, float]:
        """The numbers for `pl_module` on `batch` (mode restored afterwards)."""
        net = pl_module.net
        named = {name: p for name, p in net.named_parameters() if p.requires_grad}
        params = list(named.values())

        def loss_fn() -> Tensor:
            return task_loss(net(batch.inputs), batch)[0]

        def logits_fn(values: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
            output = torch.func.functional_call(net, dict(values), (inputs,))
            return aligned_logits(output, batch.targets.shape[1])

        generator = torch.Generator(device=batch.inputs.device).manual_seed(self.seed + step)
        was_training = pl_module.training
        pl_module.eval()
        try:
            # the fused attention kernels have no double backward; the math kernel and the reference forms have
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), reference_form():
                grads = torch.autograd.grad(loss_fn(), params, materialize_grads=True)
                values = {
                    "grad_norm": math.sqrt(float(dot(grads, grads))),
                    "hessian_trace": hutchinson_trace(loss_fn, params, self.n_probes, generator),
                    "top_eigenvalue": top_eigenvalue(loss_fn, params, self.power_iters, self.power_tol, generator),
                    "fisher_trace": fisher_trace(logits_fn, named, batch.inputs, batch.targets,
                                                 self.fisher_chunk_size, batch.answer_mask),
                }
                jacobian = jacobian_norm(net, batch.inputs, batch.targets.shape[1]) if self.jacobian else None
                return values if jacobian is None else {**values, "jacobian_norm": jacobian}
        finally:
            pl_module.train(was_training)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        values = self.compute(pl_module, self.subset(trainer, pl_module.device), trainer.global_step)
        self.history.append({"step": trainer.global_step, **values})
        return {f"curvature/{name}": value for name, value in values.items()}

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        fig = new_figure(7, 4)
        ax = fig.add_subplot()
        steps = [h["step"] for h in self.history]
        for name in QUANTITIES:  # the trace and the eigenvalue can be negative: drawn as |x|, negatives marked
            if name not in self.history[-1]:  # the Jacobian norm, off or not defined for the net
                continue
            signed = name in SIGNED
            label = f"|{name}|" if signed else name
            ax.plot(steps, [abs(h[name]) for h in self.history], marker="o", ms=3, label=label.replace("_", " "))
        negative = [(h["step"], -h[name]) for h in self.history for name in SIGNED if h[name] < 0]
        if negative:
            ax.scatter(*zip(*negative), marker="x", color="k", zorder=3, label="negative value")
        ax.set(xlabel="step", ylabel="value (training subset)", yscale="log", title="loss curvature")
        ax.legend(fontsize=7)
        publish_figure(trainer, "curvature/history", fig)

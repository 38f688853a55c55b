"""One training step, written once for every engine: pure tensor code from (net output, batch, regularisers) to
(loss, metrics), with no state and no host read, so a solo run calls it on its net's output, a captured CUDA-graph
step records it, and an ensemble runs it for every member at once under `torch.func.vmap`.

    step_loss(output, batch, regularizers, weights) -> StepResult      every step: what backward needs
    step_metrics(result, batch, layout)             -> {name: tensor}   logging steps: what the run logs

The metric names are docs/architecture.md's: `train/loss` and the task's accuracies, `train/task_loss`,
`train/reg/<name>`, `train/total_loss` under regularisers, and the net's structure (`structure_metrics`: gates,
routing entropy and usage, usage per operation, hard routing shares named by the net's `routing_options`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from core.output import NetOutput
from datamodules.batch import Batch, TaskSpec
from lightning_modules.answers import batch_accuracy, metric_layout, task_loss
from regularizers.base import Regularizer
from regularizers.compute_cost import binary_entropy
from regularizers.routing import entropy


class StepResult(NamedTuple):
    """What one training step computes before backward."""

    output: NetOutput
    task_loss: Tensor
    logits: Tensor  # (N, T, classes), aligned with the targets
    terms: dict[str, Tensor]
    total: Tensor


@dataclass(frozen=True)
class MetricLayout:
    """What the metrics of a step are named after: the task's metrics, its example groups (operations) and the
    names of a router's options (a hybrid LM's `gdn` / `softmax`)."""

    metrics: tuple[str, ...]
    groups: dict[int, str]
    options: tuple[str, ...] | None = None

    @classmethod
    def of(cls, spec: TaskSpec, net) -> "MetricLayout":
        options = getattr(net, "routing_options", None)
        return cls(tuple(spec.metrics), dict(enumerate(metric_layout(spec)[0])),
                   tuple(options) if options else None)


def step_loss(output: NetOutput, batch: Batch, regularizers: Mapping[str, Regularizer],
              weights: Mapping[str, Tensor | float]) -> StepResult:
    """The task loss over the batch's loss mask, each regulariser's term and the total minimised:
    task loss + sum of weights[name] * term (the weights are the regularisers' own in a solo run, each member's in
    an ensemble)."""
    loss, logits = task_loss(output, batch)
    terms = {name: reg(output) for name, reg in regularizers.items()}
    total = loss
    for name, term in terms.items():
        total = total + weights[name] * term
    return StepResult(output, loss, logits, terms, total)


def step_metrics(result: StepResult, batch: Batch, layout: MetricLayout) -> dict[str, Tensor]:
    """The training metrics of a step, from its own forward (the weights before its update)."""
    metrics = {"train/loss": result.task_loss}
    metrics |= {f"train/{name}": value for name, value in batch_accuracy(result.logits, batch).items()
                if name in layout.metrics}
    if result.terms:
        metrics |= {"train/task_loss": result.task_loss, "train/total_loss": result.total}
        metrics |= {f"train/reg/{name}": term for name, term in result.terms.items()}
    return metrics | structure_metrics(result.output, batch.group, layout.groups, layout.options)


def router_layer(key: str, index: int) -> str:
    """`layer_<i>` of a router's aux key (`layer_2/mixer/routing` -> `layer_2`); the router's rank for a bare key."""
    head = key.split("/", 1)[0]
    return head if head.startswith("layer_") and "/" in key else f"layer_{index}"


@torch.no_grad()
def structure_metrics(output: NetOutput, group: Tensor, group_names: dict[int, str],
                      options: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """Gate values and routing statistics of the training batch, under the metric names of docs/architecture.md;
    on multi-op data also head usage per operation (`routing/usage/layer_<i>/<op>/head_<j>`); for mixtures of
    experts the share of token assignments dropped over capacity (`moe/dropped/<where>`), for sparse token routing
    the share of the batch's tokens routed to softmax beyond its capacity (`routing/overflow/layer_<i>`), and the
    experts' usage (`routing/usage/...`: their router probabilities). Where a router makes hard choices (aux
    `expert_index`), the share of assignments each option got: `routing/share/layer_<i>/<option>`, options named by
    the net's `routing_options` (a hybrid LM's `gdn` / `softmax`), else `head_<j>`."""
    metrics: dict[str, Tensor] = {}
    if output.gates is not None:
        g = output.gates.reshape(-1, output.gates.shape[-1]).mean(0)  # (n_layers,)
        metrics |= {f"gates/layer_{i}": v for i, v in enumerate(g)}
        metrics["gates/effective_depth"] = g.sum()
        metrics["gates/active_layers"] = (g > 0.5).sum().float()
        metrics["gates/entropy"] = binary_entropy(g).mean()
    for i, (key, weights) in enumerate(output.named("routing").items()):
        layer = router_layer(key, i)
        flat = weights.reshape(-1, weights.shape[-1])
        metrics[f"routing/entropy/{layer}"] = entropy(flat).mean()
        metrics |= {f"routing/usage/{layer}/head_{j}": u for j, u in enumerate(flat.mean(0))}
        per_example = weights.reshape(weights.shape[0], -1, weights.shape[-1]).mean(1)  # (B, N)
        for index, name in group_names.items():
            usage = per_example[group == index].mean(0)
            metrics |= {f"routing/usage/{layer}/{name}/head_{j}": u for j, u in enumerate(usage)}
        choices = output.aux.get(key.removesuffix("routing") + "expert_index")
        if choices is not None:
            n = weights.shape[-1]
            share = F.one_hot(choices.reshape(-1), n).float().mean(0)  # (N,), sums to 1 over options
            names = options if options and len(options) == n else [f"head_{j}" for j in range(n)]
            metrics |= {f"routing/share/{layer}/{name}": v for name, v in zip(names, share)}
    metrics |= {f"moe/dropped/{key.removesuffix('/dropped')}": value for key, value in output.named("dropped").items()}
    metrics |= {f"routing/overflow/{router_layer(key, i)}": value
                for i, (key, value) in enumerate(output.named("overflow").items())}
    return metrics

"""Which parameters take weight decay.

The generic rule of the grokking literature: biases, norm parameters and embeddings take none. A net adds its
own names through `no_weight_decay()` (the timm convention): routing gates and their projections, say.
Each category can be put back under decay (openai/grok decays every parameter), so both conventions can be run.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


@dataclass(frozen=True)
class DecayPolicy:
    """True puts that category under weight decay."""

    biases: bool = False
    norms: bool = False
    embeddings: bool = False
    declared: bool = False  # the names a net returns from no_weight_decay()


def categories(net: nn.Module) -> dict[str, set[str]]:
    """Parameter names per category (a parameter may sit in several)."""
    found: dict[str, set[str]] = {"biases": set(), "norms": set(), "embeddings": set()}
    for module_name, module in net.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias":
                found["biases"].add(full)
            if isinstance(module, NORM_TYPES):
                found["norms"].add(full)
            if isinstance(module, nn.Embedding):
                found["embeddings"].add(full)
    declared = getattr(net, "no_weight_decay", lambda: set())()
    found["declared"] = set(declared)
    return found


def split_by_decay(net: nn.Module, policy: DecayPolicy) -> tuple[list[str], list[str]]:
    """(decayed names, not-decayed names), in `named_parameters` order; shared (tied) weights appear once."""
    names = [name for name, _ in net.named_parameters()]
    cats = categories(net)
    unknown = cats["declared"] - set(names)
    if unknown:
        raise ValueError(f"{type(net).__name__}.no_weight_decay() names unknown parameters: {sorted(unknown)}")
    exempt: set[str] = set()
    for category, members in cats.items():
        if not getattr(policy, category):
            exempt |= members
    return [n for n in names if n not in exempt], [n for n in names if n in exempt]

"""Which parameters take weight decay.

The generic rule of the grokking literature: biases, norm parameters and embeddings take none. Each category can
be put back under decay (openai/grok decays every parameter), so both conventions can be run.

A parameter's category comes from its *role*, decided by the module that owns it directly:
- a module may state the roles of its own parameters in a `parameter_roles` class attribute,
  {parameter name: "weight" | "bias" | "norm" | "embedding"} (e.g. `nets.parts.parallel_heads.ParallelMLPHeads`, whose
  per-head `up_bias` / `down_bias` are biases); this wins over the rules below;
- torch's layers need no statement: every parameter of a norm layer is a norm parameter, of an `nn.Embedding` an
  embedding, and a parameter named `bias` is a bias (`nn.Linear.bias`); the rest are weights;
- a parameter that a project module (one not from torch) owns directly and does not state is an error: a custom
  offset named anything but `bias` would otherwise be decayed silently.
"weight" means "none of the others" (matmul weights, gate logits): decayed unless declared.

A net may also declare names through `no_weight_decay()` (the timm convention): routing gates and their
projections, say. These form the `declared` category, whatever their role.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
TORCH_LAYERS = (nn.Linear, nn.Embedding, *NORM_TYPES)  # project subclasses of these keep torch's roles
ROLES = ("weight", "bias", "norm", "embedding")
CATEGORY = {"bias": "biases", "norm": "norms", "embedding": "embeddings"}  # "weight" is no category


@dataclass(frozen=True)
class DecayPolicy:
    """True puts that category under weight decay."""

    biases: bool = False
    norms: bool = False
    embeddings: bool = False
    declared: bool = False  # the names a net returns from no_weight_decay()


def parameter_role(module: nn.Module, name: str) -> str:
    """The role of `module`'s own parameter `name` (see the module docstring for the rules)."""
    stated = getattr(module, "parameter_roles", {})
    owner = type(module).__name__
    if name in stated:
        if stated[name] not in ROLES:
            raise ValueError(f"{owner}.parameter_roles gives {name!r} the role {stated[name]!r}; roles: {ROLES}")
        return stated[name]
    if isinstance(module, NORM_TYPES):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if name == "bias":
        return "bias"
    if isinstance(module, TORCH_LAYERS) or type(module).__module__.startswith("torch."):
        return "weight"
    raise ValueError(f"{owner}.{name} has no role: state it in {owner}.parameter_roles "
                     f"(one of {', '.join(ROLES)}), so that weight decay treats it as what it is")


def categories(net: nn.Module) -> dict[str, set[str]]:
    """Parameter names per category (a parameter may sit in several: a declared bias, say)."""
    found: dict[str, set[str]] = {category: set() for category in CATEGORY.values()}
    for module_name, module in net.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            role = parameter_role(module, param_name)
            if role in CATEGORY:
                found[CATEGORY[role]].add(f"{module_name}.{param_name}" if module_name else param_name)
    found["declared"] = set(getattr(net, "no_weight_decay", lambda: set())())
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

"""Objects from config nodes, with bad settings reported under their full key."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from datamodules import TaskSpec
from runtime.errors import ConfigError, require

SPEC_FIELDS = ("in_features", "vocab_size", "num_classes", "seq_len")


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate`, with a bad setting reported under its full key (e.g. `data.p`). A group that names several
    objects (`regularizer: {entropy: {_target_: ...}, ...}`) becomes a dict of them, each built under its own name
    so that its errors say which one (`regularizer.entropy.weight`)."""
    if is_named_objects(node) and not kwargs:
        return {name: build(member, f"{key}.{name}") for name, member in node.items()}
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause.under(key) from None
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise ConfigError(key, node.get("_target_"), f"only settings it accepts ({cause})") from None
        raise


def is_named_objects(node: Any) -> bool:
    """A mapping of names to object configs (no `_target_` of its own); an empty one counts."""
    return (isinstance(node, DictConfig) and "_target_" not in node
            and all(isinstance(member, DictConfig) and "_target_" in member for member in node.values()))


def build_net(model_cfg: DictConfig, spec: TaskSpec) -> torch.nn.Module:
    """Build the net with the sizes the data dictates (input dims, vocabulary, classes, length)."""
    net_class = get_class(model_cfg._target_)
    accepts = inspect.signature(net_class).parameters
    for name in SPEC_FIELDS:
        require(name not in model_cfg, f"model.{name}", model_cfg.get(name), "unset: it is taken from the data")
    wanted = getattr(net_class, "input_kind", spec.input_kind)
    require(wanted == spec.input_kind, "data.format", f"{spec.input_kind} inputs",
            f"{'onehot' if wanted == 'onehot' else 'tokens or sequence'} for model {net_class.__name__}")
    sizes = {name: getattr(spec, name) for name in SPEC_FIELDS if name in accepts}
    return build(model_cfg, "model", **sizes)


def configure_torch(cfg: DictConfig) -> None:
    """The process-wide torch settings a run asks for: CPU threads and float32 matmul precision."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))

"""Objects from config nodes, with bad settings reported under their full key."""
from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from core.errors import ConfigError, require
from datamodules import TaskSpec

SPEC_FIELDS = ("in_features", "vocab_size", "num_classes", "seq_len")
# in a model config: names of its settings that the net does not take but its parts' configs read by interpolation
# (conf/model/transformer.yaml: `n_heads`, read by `mixer: {n_heads: ${..n_heads}}`)
PART_SETTINGS = "_part_settings_"


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


def build_offering(node: DictConfig, key: str, **offers: Any) -> Any:
    """`build`, handing the object those of `offers` its constructor names as parameters (what only the run knows,
    e.g. the step a resumed run starts from, which the CSV logger needs and a W&B logger does not take)."""
    target = get_object(node._target_)
    accepts = inspect.signature(target).parameters
    return build(node, key, **{name: value for name, value in offers.items() if name in accepts})


def is_named_objects(node: Any) -> bool:
    """A mapping of names to object configs (no `_target_` of its own); an empty one counts."""
    return (isinstance(node, DictConfig) and "_target_" not in node
            and all(isinstance(member, DictConfig) and "_target_" in member for member in node.values()))


def build_net(model_cfg: DictConfig, spec: TaskSpec) -> torch.nn.Module:
    """Build the net with the sizes the data dictates (input dims, vocabulary, classes, length). The settings a
    model config lists under `_part_settings_` are its parts' (read by interpolation), not the net's: the net is
    built from the config resolved without them, and a bad value is reported under the key that was set."""
    net_class = get_class(model_cfg._target_)
    accepts = inspect.signature(net_class).parameters
    for name in SPEC_FIELDS:
        require(name not in model_cfg, f"model.{name}", model_cfg.get(name), "unset: it is taken from the data")
    wanted = getattr(net_class, "input_kind", spec.input_kind)
    require(wanted == spec.input_kind, "data.format", f"{spec.input_kind} inputs",
            f"{'onehot' if wanted == 'onehot' else 'tokens or sequence'} for model {net_class.__name__}")
    sizes = {name: getattr(spec, name) for name in SPEC_FIELDS if name in accepts}
    node = model_cfg
    if PART_SETTINGS in model_cfg:  # settings its parts read, kept at the top for the command line: resolved, left out
        shared = {PART_SETTINGS, *model_cfg[PART_SETTINGS]}
        resolved = OmegaConf.to_container(model_cfg, resolve=True)
        node = OmegaConf.create({name: value for name, value in resolved.items() if name not in shared})
    try:
        return build(node, "model", **sizes)
    except ConfigError as err:  # a part's setting that reads a shared one is reported as the shared one
        raise at_source(err, model_cfg, "model") from None


# a whole value `${..key}` / `${.key.sub}` (relative) or `${group.key}` (absolute)
INTERPOLATION = r"\$\{(\.*)([A-Za-z_][\w.]*)\}"


def setting_source(node: DictConfig, path: str, group: str) -> str:
    """The setting of `node` (at config key `group`) that `path` takes its value from: `path` itself, or what it
    interpolates as a whole value (`mixer.n_heads: ${..n_heads}` -> `n_heads`), followed as far as it goes."""
    for _ in range(16):  # a chain this long is a cycle, which the config would not resolve anyway
        parent, _, leaf = path.rpartition(".")
        container = OmegaConf.select(node, parent) if parent else node
        if not isinstance(container, DictConfig) or leaf not in container:
            break
        raw = OmegaConf.to_container(container, resolve=False)[leaf]
        match = re.fullmatch(INTERPOLATION, raw) if isinstance(raw, str) else None
        if match is None:
            break
        dots, target = match.groups()
        if not dots:  # absolute: within the group only
            if not target.startswith(f"{group}."):
                break
            path = target.removeprefix(f"{group}.")
            continue
        base = parent.split(".") if parent else []
        up = len(dots) - 1
        if up > len(base):  # above the group
            break
        path = ".".join([*base[: len(base) - up], target])
    return path


def at_source(err: ConfigError, node: DictConfig, group: str) -> ConfigError:
    """`err` (keyed `group.<path>`) keyed by the setting its value came from (`setting_source`)."""
    if not err.key.startswith(f"{group}."):
        return err
    path = err.key.removeprefix(f"{group}.")
    source = setting_source(node, path, group)
    return err if source == path else ConfigError(f"{group}.{source}", err.value, err.allowed, err.related)


def configure_torch(cfg: DictConfig) -> None:
    """The process-wide torch settings a run asks for: CPU threads and float32 matmul precision."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))

"""Initial weights as a shared, checkable thing: paired runs start from bit-identical nets (the conditions-for-grokking study).

Every run saves its net's initial weights as `init.pt` in its run folder and records a fingerprint of them in
`summary.json`; `init_from=<run folder or .pt file>` starts another run from those weights, so the arms of a
paired comparison (e.g. wd 0 vs wd 1) differ only in their own setting. `init_scale` multiplies every initial
weight by α, the knob Omnigrok (Liu et al. 2022, "Omnigrok: Grokking Beyond Algorithmic Data") ties to grokking:
large α memorises first and groks late, small α generalises sooner. `save_torch_default_init` writes, for
`init_from`, the net a config builds with every layer at PyTorch's default init, as reference code that never
re-initialises starts (the Grokfast paper's).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from core.errors import ConfigError, require
from runtime.config.build import build, build_net
from runtime.config.compose import compose_config

INIT_FILE = "init.pt"


def fingerprint(net: nn.Module) -> str:
    """sha256 (first 16 hex digits) of every parameter's name, shape and bytes: equal only for identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def init_path(source: str | Path) -> Path:
    path = Path(source)
    return path / INIT_FILE if path.is_dir() else path


def load_init(net: nn.Module, source: str | Path) -> None:
    """Copy saved initial weights into `net`; names and shapes must match exactly."""
    path = init_path(source)
    expected = f"a run folder holding {INIT_FILE}, or a saved init file"
    require(path.is_file(), "init_from", str(source), expected)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all (a CSV, text, another archive): whatever torch.load raised
        raise ConfigError("init_from", str(source), expected) from None
    require(isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values()), "init_from",
            str(source), expected)
    own = net.state_dict()
    mismatch = sorted(set(state) ^ set(own)) + [k for k in own if k in state and state[k].shape != own[k].shape]
    require(not mismatch, "init_from", str(source),
            f"weights of the same model config (differs in: {', '.join(mismatch[:5])})")
    net.load_state_dict(state)


@torch.no_grad()
def scale_init(net: nn.Module, scale: float) -> None:
    require(isinstance(scale, (int, float)) and scale > 0, "init_scale", scale, "a number > 0 (1.0 = as built)")
    if scale != 1:
        for parameter in net.parameters():
            parameter.mul_(scale)


def prepare_init(net: nn.Module, run_dir: Path, init_from: str | None, scale: float) -> str:
    """Load or scale the initial weights, save them in the run folder (the main process only: under DDP every
    rank builds the same weights), and return their fingerprint."""
    if init_from:
        load_init(net, init_from)
    else:
        scale_init(net, scale)
    if rank_zero_only.rank == 0:
        torch.save(net.state_dict(), run_dir / INIT_FILE)
    return fingerprint(net)


def save_torch_default_init(overrides: Sequence[str], seed: int, path: Path) -> None:
    """The net `overrides` build, seeded as a run seeds it, with every layer re-initialised by PyTorch's default
    (`reset_parameters`: embeddings N(0, 1), linears U(±1/sqrt(fan_in))), saved at `path` for `init_from`."""
    cfg = compose_config([*overrides, f"seed={seed}"])
    spec = build(cfg.data, "data").spec
    pl.seed_everything(seed, workers=False, verbose=False)
    net = build_net(cfg.model, spec)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)

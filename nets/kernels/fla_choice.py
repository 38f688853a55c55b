"""Which kernel runs Gated DeltaNet's rule: flash-linear-attention's (fla) fused Triton kernel where it runs
correctly, else the PyTorch form (nets/kernels/gated_delta.py). Two decisions, for nets/parts/gated_deltanet.py:

- When a layer is built: can fla run correctly on this machine? `machine_facts()` reads what fla's own checks read
  (the package, a CUDA device, the device's generation, Triton's version, whether fla's TileLang backend would take
  the backward) without running a kernel; `refusal(facts)` applies fla's rule to them and says why not, in one line.
  kernel=auto never picks a kernel that would refuse or is known to be wrong; kernel=fla is refused with the reason.
- At each forward: fla's autograd Function is ctx-style (torch.func refuses it: "must override the setup_context
  staticmethod") and its backward is not differentiable (a double backward would silently drop GDN's second-order
  terms). So under torch.func transforms (vmap, grad: ensembles, per-example gradients) and inside
  `reference_form()` (Hessian-vector products) the PyTorch form runs, whatever the setting.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from typing import Callable, Iterator

import torch
from torch import Tensor

FLA_DEVICE = "cuda"  # the device type fla's kernels take (the CPU tests stand a double in for them)
FLA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# fla issue #640: Triton from 3.4.0 up to (not including) 3.7.1 miscompiles the gated chunk backward on Hopper GPUs;
# fla-core 0.6.0 raises there unless its TileLang backend takes that kernel
HOPPER_BAD_TRITON = ((3, 4, 0), (3, 7, 1))


@dataclass(frozen=True)
class MachineFacts:
    """What decides whether fla's kernel can run here. `fla`/`triton`: installed versions (None: not installed);
    `device_name`, `capability`: CUDA device 0's, as fla reads them; `tilelang`: fla's TileLang backend would take
    the gated backward (the tilelang package and an nvcc found, not switched off)."""

    fla: str | None = None
    cuda: bool = False
    device_name: str = ""
    capability: tuple[int, int] | None = None
    triton: str | None = None
    tilelang: bool = False


def version_key(version: str) -> tuple[tuple[int, ...], int]:
    """A version string as a comparable key: its release numbers (padded to three), then 0 for a pre-release or
    development build of that release (3.7.1rc1 < 3.7.1) and 1 otherwise (3.7.1+git0abc == 3.7.1)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)(.*)", version)
    if match is None:
        return (0, 0, 0), 0
    release = tuple(int(part) for part in match.group(1).split("."))
    release += (0,) * (3 - len(release))
    pre = re.match(r"[.\-_]?(a|alpha|b|beta|c|rc|pre|preview|dev)\d*", match.group(2).lower()) is not None
    return release, 0 if pre else 1


def is_hopper(facts: MachineFacts) -> bool:
    """fla's test (fla/utils/hardware.py): an NVIDIA device named "NVIDIA H..." or of compute capability 9.x."""
    return "NVIDIA H" in facts.device_name or (facts.capability is not None and facts.capability[0] == 9)


def hopper_miscompiles(facts: MachineFacts) -> bool:
    """A Hopper GPU with a Triton that miscompiles fla's gated chunk backward (fla issue #640)."""
    low, high = ((release, 1) for release in HOPPER_BAD_TRITON)
    return is_hopper(facts) and facts.triton is not None and low <= version_key(facts.triton) < high


def refusal(facts: MachineFacts) -> str | None:
    """Why fla's GDN kernel cannot run correctly on a machine with these facts (one line), or None when it can."""
    if facts.fla is None:
        return "the flash-linear-attention package is not installed (pip install -e '.[fla]')"
    if not facts.cuda:
        return "flash-linear-attention's kernels need a CUDA device (none here)"
    if facts.triton is None:
        return "flash-linear-attention's kernels need Triton (not installed)"
    if hopper_miscompiles(facts) and not facts.tilelang:
        return (f"flash-linear-attention {facts.fla} needs Triton >= 3.7.1 or tilelang on Hopper GPUs "
                f"(this machine: Triton {facts.triton})")
    return None


def installed_version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def fla_installed() -> bool:
    """Whether flash-linear-attention's kernels can be imported (the optional `fla` extra)."""
    return importlib.util.find_spec("fla") is not None


def tilelang_takes_the_backward() -> bool:
    """fla's own rule (fla/backends.py, fla/ops/common/backends/tilelang): its TileLang backend serves the gated
    chunk backward when backend dispatch is on and the backend is available (package, nvcc) and enabled."""
    if os.environ.get("FLA_DISABLE_BACKEND_DISPATCH") == "1":
        return False
    try:
        from fla.ops.common.backends.tilelang import CommonTileLangBackend
    except ImportError:  # an fla without that backend: nothing takes the kernel from Triton
        return False
    return bool(CommonTileLangBackend.is_available() and CommonTileLangBackend().is_enabled())


@cache
def machine_facts() -> MachineFacts:
    """This machine's facts, read once per process and only as far as the rule needs them: nothing is imported
    from fla, and CUDA is not touched, unless fla is installed and a CUDA device is visible."""
    if not fla_installed():
        return MachineFacts()
    fla = installed_version("fla-core", "flash-linear-attention") or "(unknown version)"
    if not torch.cuda.is_available():
        return MachineFacts(fla=fla)
    facts = MachineFacts(fla=fla, cuda=True, device_name=torch.cuda.get_device_name(0),
                         capability=tuple(torch.cuda.get_device_capability()),
                         triton=installed_version("triton", "pytorch-triton"))
    if hopper_miscompiles(facts):
        facts = replace(facts, tilelang=tilelang_takes_the_backward())
    return facts


def fla_refusal() -> str | None:
    """`refusal` of this machine."""
    return refusal(machine_facts())


_noted: set[str] = set()


def note_fallback(reason: str) -> None:
    """Say once per process why kernel=auto runs the PyTorch form, where a GPU could have run fla (on a machine
    without CUDA the PyTorch form is the only one, and the launcher's `GDN kernel:` line says so)."""
    if machine_facts().cuda and reason not in _noted:
        _noted.add(reason)
        print(f"[grokking-lab] note: Gated DeltaNet runs its PyTorch form (kernel=auto): {reason}", flush=True)


def fla_chunk_rule() -> Callable:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    return chunk_gated_delta_rule


_reference_depth = 0


@contextmanager
def reference_form() -> Iterator[None]:
    """Inside: every Gated DeltaNet runs its PyTorch form, whose backward is differentiable (enter it around
    Hessian-vector products, or anything else that differentiates a backward). Nests."""
    global _reference_depth
    _reference_depth += 1
    try:
        yield
    finally:
        _reference_depth -= 1


def reference_form_required() -> bool:
    """Whether a forward now must not enter fla's autograd Function: inside `reference_form()`, or under a
    torch.func transform (vmap, grad, jvp...), where a CUDA input still says is_cuda but torch.func refuses a
    ctx-style Function."""
    return _reference_depth > 0 or torch._C._are_functorch_transforms_active()


def fla_takes(x: Tensor) -> bool:
    """Whether fla's kernels take this input: on their device and in a dtype they have."""
    return x.device.type == FLA_DEVICE and x.dtype in FLA_DTYPES


__all__ = ["MachineFacts", "fla_installed", "fla_refusal", "machine_facts", "reference_form", "refusal"]

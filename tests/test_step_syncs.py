"""A training step reads nothing back from the device and copies nothing from the host (issue 24, item 7).

Each such read or copy stalls a GPU once per step: the CPU can no longer queue work ahead. This machine has no
GPU, so a step of each preset runs on the CPU while two recorders watch it:

- a `TorchDispatchMode` records the ops that wait for the device: `_local_scalar_dense` (item, bool, float,
  int), `nonzero`, `bincount`, `masked_select`, `unique*`, `equal`, and indexing with a boolean mask (`t[mask]`,
  which finds the mask's True entries on the host);
- Python-level wrappers record what never reaches the dispatcher on a CPU: `tolist()`, `numpy()` and `cpu()`
  (device-to-host reads on a GPU), and `.to(<device>)` of a CPU tensor without `non_blocking=True`, which on a
  CPU is a no-op that dispatches nothing, but on a GPU is the blocking host-to-device copy of something drawn or
  built on the host.

The window is two steps' worth of everything (data fetch, forward, regularisers, backward, clipping, callbacks,
optimiser): from the probe's `on_train_batch_end` of one step to that of the step after next, so every hook runs
twice in it, whatever the callbacks' order, and a mini-batch epoch of two steps starts in it. The steps are
neither logging nor validation steps, which read metrics by design. The NaN guard is told to defer its check
(`defer=true`) as it does on a GPU. Where a preset must show one of the named exceptions, the test also asserts
that it was seen: the recorders are live.
"""
from __future__ import annotations

import sys
import traceback
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import ROOT, run_quietly

aten = torch.ops.aten
WAITING_OPS = {aten._local_scalar_dense, aten.nonzero, aten.bincount, aten.masked_select, aten._unique,
               aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.unique_dim_consecutive, aten.equal}
INDEXING_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
PROJECT_DIRS = ("callbacks", "core", "datamodules", "lightning_modules", "nets", "regularizers", "runtime")


def project_place(filename: str, line: int) -> str | None:
    """`path/in/the/project.py:line` for a file of the project (not of its tests), else None."""
    try:
        path = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return f"{path.as_posix()}:{line}" if path.parts[0] in PROJECT_DIRS else None


def where_from() -> str:
    """The innermost project frame that led here."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if place := project_place(frame.filename, frame.lineno):
            return place
    return "outside the project"


def is_bool_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class SyncRecorder(TorchDispatchMode):
    """Records (what, where) for every op or call that would make the host wait for a GPU, or copy to it."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in WAITING_OPS:
            self.found.append((packet.__name__, where_from()))
        elif packet in INDEXING_OPS and len(args) > 1 and any(is_bool_mask(i) for i in args[1] or ()):
            self.found.append((f"{packet.__name__} with a boolean mask", where_from()))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        recorder = self
        to, saved = torch.Tensor.to, self._saved
        saved.update(to=to, tolist=torch.Tensor.tolist, numpy=torch.Tensor.numpy, cpu=torch.Tensor.cpu)

        def recording_to(tensor, *args, **kwargs):
            # project code that moves a tensor to a device inside a step: a no-op where it is already there, else a
            # copy from the host; on a CPU both look alike, so any such call counts (torch's own calls, e.g. in
            # clip_grad_norm_, move device tensors between devices of their own and are left to torch)
            device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
            caller = sys._getframe(1)
            if device is not None and not non_blocking and tensor.device.type == "cpu" and (
                    place := project_place(caller.f_code.co_filename, caller.f_lineno)):
                recorder.found.append(("blocking host-to-device .to()", place))
            return to(tensor, *args, **kwargs)

        def recording(name):
            original = saved[name]

            def call(tensor, *args, **kwargs):
                recorder.found.append((f"{name}()", where_from()))
                return original(tensor, *args, **kwargs)

            return call

        torch.Tensor.to = recording_to
        for name in ("tolist", "numpy", "cpu"):
            setattr(torch.Tensor, name, recording(name))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)


class StepSyncProbe(pl.Callback):
    """Records the steps that take global_step from `first` to `last` (see the module docstring)."""

    found: list[tuple[str, str]] | None = None

    def __init__(self, first: int, last: int):
        self.first, self.last, self.recorder = first, last, None

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.first:
            self.recorder = SyncRecorder()
            self.recorder.__enter__()
        elif trainer.global_step == self.last and self.recorder is not None:
            self.recorder.__exit__(None, None, None)
            StepSyncProbe.found = self.recorder.found
            self.recorder = None

    def teardown(self, trainer, pl_module, stage):
        if self.recorder is not None:  # the run ended inside the window: leave torch as it was
            self.recorder.__exit__(None, None, None)
            self.recorder = None


# steps 6 -> 8 of every preset: no logging (every 50), no validation (every 50), no checkpoint
FIRST, LAST = 6, 8
QUIET = ["trainer.max_steps=10", "trainer.log_every_n_steps=50", "trainer.val_check_interval=50",
         "optimizer.warmup_steps=2", "callbacks.finite_loss.defer=true", "callbacks.progress.refresh_seconds=1000",
         "callbacks.checkpoint.every_n_train_steps=100000", "callbacks.checkpoint.every_minutes=null",
         "callbacks.checkpoint.at_first_validation=false", "threads=1",
         f"+callbacks.sync_probe={{_target_: tests.test_step_syncs.StepSyncProbe, first: {FIRST}, last: {LAST}}}"]
LM = ["data.seq_len=32", "data.batch_size=4", "model.d_model=32", "model.n_heads=2"]
PRESETS = {
    "mlp, spectral penalty": ["experiment=mlp_grok", "data.p=11", "regularizer=spectral"],
    "mlp, mini-batches": ["experiment=mlp_grok", "data.p=11", "data.batch_size=30"],  # 2 per epoch: one starts
    "transformer, grokfast ma": ["experiment=transformer_grok", "size=cpu", "data.p=11", "grokfast=ma",
                                 "callbacks.grokfast.window_size=3"],
    "routed transformer, entropy": ["experiment=routed_none", "size=cpu", "data.p=11", "regularizer=entropy"],
    "moe transformer, balance": ["experiment=moe_expressivity_moe", "data.batch_size=32", "grokfast=ema"],
    "moe transformer, capacity": ["experiment=moe_expressivity_moe", "data.batch_size=32",
                                  "model.ffn.capacity_factor=1.0"],
    "digit addition, fresh numbers": ["experiment=add7", "data.sample_fresh=true", "data.batch_size=32"],
    "sequence format": ["experiment=conditions_study", "size=cpu", "data.p=11", "mini_batch_size=16"],
    "hybrid lm, bf16 with clipping": ["experiment=hybrid_dynamic", "size=cpu", "model.layers=[gdn,routed,attn]",
                                      "trainer.precision=bf16-mixed", *LM],
    "hybrid lm, sparse routing": ["experiment=hybrid_dynamic", "size=cpu", "model.layers=[gdn,routed,attn]",
                                  "model.routing_mode=sparse", *LM],
}
# what a step may do of the above, with the reason: (what, where) -> why
INHERENT = {
    ("tolist()", "nets/parts/moe.py"): "the grouped dispatch's split sizes: how many tokens each expert takes is data, "
                                 "and the shapes of its matmuls are read on the host",
    ("index with a boolean mask", "datamodules/digit_addition.py"): "fresh numbers are drawn by rejection on the "
        "host (host tensors: nothing waits for a device); the batch then goes over without blocking",
}


# presets that must show one of them
SEEN = {"moe transformer, balance": "tolist()", "moe transformer, capacity": "tolist()",
        "digit addition, fresh numbers": "index with a boolean mask"}


def inherent(what: str, where: str) -> bool:
    return any(what == w and where.startswith(place) for w, place in INHERENT)


@pytest.mark.parametrize("preset", PRESETS)
def test_a_training_step_neither_waits_for_the_device_nor_copies_from_the_host(preset, tmp_path):
    StepSyncProbe.found = None
    summary, _ = run_quietly([*PRESETS[preset], *QUIET], tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert StepSyncProbe.found is not None, "the probe's window was never closed"
    unexpected = Counter(f"{what} at {where}" for what, where in StepSyncProbe.found if not inherent(what, where))
    assert not unexpected, dict(unexpected)
    if preset in SEEN:
        assert SEEN[preset] in {what for what, _ in StepSyncProbe.found}


def test_the_recorders_see_host_reads_mask_indexing_and_device_moves_by_project_code():
    from datamodules import ModularArithmetic

    data, values = ModularArithmetic(p=5), torch.arange(3.0)
    with SyncRecorder() as recorder:
        data.setup()  # moves each split's tensors with .to(<device>), here the CPU: what the recorder must flag
        values[values > 0]
        values.sum().item()
        values.tolist()
        values.to(torch.device("cpu"), non_blocking=True)  # from a test, and not blocking: neither counts
    moves = [where for what, where in recorder.found if what == "blocking host-to-device .to()"]
    assert len(moves) == 3 * 5 and all(where.startswith("datamodules/in_memory.py:") for where in moves)  # 3 splits
    assert {what for what, _ in recorder.found} == {"blocking host-to-device .to()", "index with a boolean mask",
                                                    "_local_scalar_dense", "tolist()"}
    assert torch.Tensor.to is not None and "recording" not in torch.Tensor.to.__name__  # put back

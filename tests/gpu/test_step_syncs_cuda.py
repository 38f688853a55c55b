"""On a CUDA device, a training step of each preset makes the host wait for nothing: the GPU half of
tests/test_step_syncs.py, whose recorders stand in for the device on a CPU. Here torch's own sync debugging
(`torch.cuda.set_sync_debug_mode("error")`) raises at any synchronising call inside the same two-step window
(data fetch, forward, regularisers, backward, clipping, callbacks, optimiser). The presets whose steps must read a
shape on the host (tests.test_step_syncs.SEEN: the MoE dispatch) are left out."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from tests.conftest import run_quietly
from tests.test_step_syncs import FIRST, LAST, PRESETS, QUIET, SEEN

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SYNC_FREE = [name for name in PRESETS if SEEN.get(name) not in ("tolist()", "_local_scalar_dense")]


class SyncFreeWindow(pl.Callback):
    """From step FIRST's end to step LAST's end, any synchronising CUDA call raises."""

    entered: list[int] = []

    def __init__(self):
        self.active = False

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == FIRST:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            self.active = True
            SyncFreeWindow.entered.append(FIRST)
        elif trainer.global_step == LAST and self.active:
            torch.cuda.set_sync_debug_mode("default")
            self.active = False

    def teardown(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("preset", SYNC_FREE)
def test_a_cuda_training_step_never_synchronises(preset, tmp_path):
    SyncFreeWindow.entered = []
    quiet = [item for item in QUIET if "sync_probe" not in item]
    summary, _ = run_quietly([*PRESETS[preset], *quiet, "trainer.accelerator=gpu",
                              "+callbacks.sync_window._target_=tests.gpu.test_step_syncs_cuda.SyncFreeWindow"],
                             tmp_path)
    torch.cuda.set_sync_debug_mode("default")
    assert SyncFreeWindow.entered == [FIRST], "the window never opened"
    assert summary["status"] == "completed", summary.get("error")

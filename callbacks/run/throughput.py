"""Training and evaluation speed in tokens per second, the figure a language-model comparison is judged by, and how
far training is from the device's limit: model FLOPs utilisation (MFU).

A token is one input position of a batch (a byte of a text window; an equation's tokens; one row of one-hot data
counts as one). Training speed is measured over the steps between two logging steps (the device is synchronised
at each logging step, nowhere else, so a step pays nothing for it), evaluation speed over each validation pass.
Logged: `speed/train_tokens_per_s` on logging steps and `speed/val_tokens_per_s` after each validation.
summary.json gets `speed`: the mean training speed after the first `skip_steps` steps (compilation, allocator
warm-up and the first validation would otherwise count), the mean evaluation speed, and the tokens trained on.

For a net that counts its FLOPs (`forward_flops`, nets/parts/flops.py: the hybrid LM) the training FLOPs follow:
model FLOPs per token (a training step's, 3x the forward's, at the batch's window length) x tokens/s is the model
FLOP/s, logged as `speed/train_tflops` and in the summary as `model_flops_per_token` and
`train_model_flops_per_s`. Over the device's peak (core/device_peaks.py: by the GPU's name and the precision the
run computes in, or `peak_tflops` when given) it is the MFU: `speed/mfu`, and `mfu`, `peak_flops_per_s` and `peak`
(where the peak came from) in the summary. A CPU, or a GPU the table does not know, gets FLOP/s and no MFU unless
`peak_tflops` is given. Under DDP the peak is every device's together.
"""
from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from core.device_peaks import compute_precision, peak_flops
from core.errors import require
from lightning_modules.cadence import is_log_step
from nets.parts.flops import flops_per_token


def batch_tokens(batch: Any) -> int:
    """Input positions in this process's batch (under DDP each process serves its shard)."""
    inputs = batch.inputs
    return inputs.shape[0] * window_length(batch)


def window_length(batch: Any) -> int:
    """Positions per example: a token sequence's length, 1 for one-hot rows."""
    inputs = batch.inputs
    return inputs.shape[1] if inputs.ndim == 2 and not inputs.is_floating_point() else 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_peak(device: torch.device, trainer_precision: str, given_tflops: float | None) -> tuple[float, str] | None:
    """(peak FLOP/s of one device, where it came from) or None: the given one, else the table's for a CUDA device
    at the precision the run computes in (core/device_peaks.py)."""
    if given_tflops is not None:
        return given_tflops * 1e12, "given (peak_tflops)"
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    precision = compute_precision(trainer_precision, torch.get_float32_matmul_precision(), device.type)
    peak = peak_flops(name, precision)
    return None if peak is None else (peak, f"{name}, {precision} (table)")


class Throughput(Callback):
    """skip_steps: training steps left out of the summary's mean (their windows are still logged); peak_tflops: the
    device's peak in TFLOP/s for the MFU, overriding the table (null: the table's, none on a CPU)."""

    summary_key = "speed"

    def __init__(self, skip_steps: int = 20, peak_tflops: float | None = None):
        require(isinstance(skip_steps, int) and skip_steps >= 0, "skip_steps", skip_steps, "an integer >= 0")
        require(peak_tflops is None or (isinstance(peak_tflops, (int, float)) and not isinstance(peak_tflops, bool)
                                        and peak_tflops > 0), "peak_tflops", peak_tflops,
                "null (the table's peak for the device) or a number of TFLOP/s > 0")
        self.skip_steps, self.peak_tflops = skip_steps, peak_tflops
        self._window_start: float | None = None
        self._window_tokens = 0
        self._window_flops: float | None = 0.0  # None: the net does not count its FLOPs
        self._steady_time = self._steady_tokens = 0.0
        self._steady_flops: float | None = 0.0
        self._eval_start = 0.0
        self._eval_tokens = 0
        self._eval_speeds: list[float] = []
        self.tokens_seen = 0
        self._net = None
        self._flops_per_token: dict[int, float | None] = {}  # by window length
        self.peak: tuple[float, str] | None = None  # all devices' peak FLOP/s, and where it came from

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._net = getattr(pl_module, "net", None)  # an ensemble's module holds no single net: no FLOPs
        peak = device_peak(pl_module.device, str(trainer.precision), self.peak_tflops)
        self.peak = None if peak is None else (peak[0] * trainer.world_size, peak[1])

    def model_flops_per_token(self, length: int) -> float | None:
        """A training step's model FLOPs per token at windows of `length` (None: the net does not count them)."""
        if length not in self._flops_per_token:
            self._flops_per_token[length] = None if self._net is None else flops_per_token(self._net, length)
        return self._flops_per_token[length]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args) -> None:
        if self._window_start is None:
            synchronize(pl_module.device)
            self._window_start = time.perf_counter()
        tokens = batch_tokens(batch) * trainer.world_size
        self._window_tokens += tokens
        per_token = self.model_flops_per_token(window_length(batch))
        counted = per_token is not None and self._window_flops is not None
        self._window_flops = self._window_flops + tokens * per_token if counted else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not is_log_step(step, trainer) or self._window_start is None:
            return
        synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._window_start
        self.tokens_seen += self._window_tokens
        if elapsed > 0:
            pl_module.log("speed/train_tokens_per_s", self._window_tokens / elapsed)
            if self._window_flops is not None:
                pl_module.log("speed/train_tflops", self._window_flops / elapsed / 1e12)
                if self.peak is not None:
                    pl_module.log("speed/mfu", self._window_flops / elapsed / self.peak[0])
            if step > self.skip_steps:
                self._steady_time += elapsed
                self._steady_tokens += self._window_tokens
                counted = self._steady_flops is not None and self._window_flops is not None
                self._steady_flops = self._steady_flops + self._window_flops if counted else None
        self._window_start, self._window_tokens, self._window_flops = None, 0, 0.0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tokens_seen += self._window_tokens  # a window the last logging step did not close
        self._window_start, self._window_tokens, self._window_flops = None, 0, 0.0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._eval_start, self._eval_tokens = time.perf_counter(), 0

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  *args: Any) -> None:
        self._eval_tokens += batch_tokens(batch) * trainer.world_size

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._eval_start
        if trainer.sanity_checking or elapsed <= 0 or not self._eval_tokens:
            return
        self._eval_speeds.append(self._eval_tokens / elapsed)
        pl_module.log("speed/val_tokens_per_s", self._eval_speeds[-1])
        # the validation pass interrupts a training window: its time is not training time
        if self._window_start is not None:
            self._window_start += elapsed

    def summary_part(self) -> dict[str, Any] | None:
        part: dict[str, Any] = {
            "train_tokens_per_s": self._steady_tokens / self._steady_time if self._steady_time else None,
            "val_tokens_per_s": sum(self._eval_speeds) / len(self._eval_speeds) if self._eval_speeds else None,
            "train_tokens": self.tokens_seen}
        if self._steady_time and self._steady_flops is not None:
            part["model_flops_per_token"] = self._steady_flops / self._steady_tokens
            part["train_model_flops_per_s"] = self._steady_flops / self._steady_time
            if self.peak is not None:
                part |= {"peak_flops_per_s": self.peak[0], "peak": self.peak[1],
                         "mfu": part["train_model_flops_per_s"] / self.peak[0]}
        return {key: value for key, value in part.items() if value is not None} or None

"""Framework throughput against a hand-written PyTorch loop, same device, same data placement, one process.

Both arms train the same net (same init, split, optimiser and its groups, warmup, clipping) for the same number
of full-batch steps with the data resident on the device, evaluate the validation split at the same cadence and
read training accuracy on the same logging steps. The framework arm is `launch.run` as a user gets it (CSV
logger, checkpoints, progress bar, grokking time, NaN guard, and on a GPU the captured step where the run allows it:
`module.cuda_graph=auto`; the bench prints which way it stepped, and `module.cuda_graph=false` measures it eager). Arms alternate and repeat; printed are the medians
of steady-state steps/s (from step `--warmup` to the last step, the GPU synchronised at both ends, as the
progress bar shows it) and of whole-run steps/s (set-up, checkpoints and final evaluation included), and the
ratio framework / plain. Targets: >= 0.95 on CPU; on CUDA >= 1.5 for mlp_grok and nanda_grok (captured).

    python bench/overhead.py [--device cpu|cuda] [--experiment mlp_grok] [--steps N] [--repeats 3] [overrides...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hydra.utils import instantiate  # noqa: E402

from datamodules import Batch  # noqa: E402
from launch import run  # noqa: E402
from runtime.config.build import build_net  # noqa: E402
from runtime.config.compose import compose_config  # noqa: E402

ACCELERATOR = {"cpu": "cpu", "cuda": "gpu"}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Steady-state steps/s of a framework run: from step `warmup` to the end, the device synchronised at both."""

    rates: list[float] = []

    def __init__(self, warmup: int):
        self.warmup, self.started = warmup, None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            synchronize(trainer.strategy.root_device.type)
            self.started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(trainer.strategy.root_device.type)
        StepTimer.rates.append((trainer.global_step - self.warmup) / (time.perf_counter() - self.started))


def plain_loop(cfg, steps: int, warmup: int, device: str) -> tuple[float, float]:
    """The reference, everything by hand. Returns (steady-state, whole-run) steps per second."""
    started = time.perf_counter()
    data = instantiate(cfg.data)
    pl.seed_everything(cfg.seed, verbose=False)
    net = build_net(cfg.model, data.spec).to(device)
    optimizer, scheduler = instantiate(cfg.optimizer).build(net)
    train, val = (Batch(*(t.to(device) for t in data.splits[name])) for name in ("train", "val"))
    log_every, val_every = cfg.trainer.log_every_n_steps, cfg.trainer.val_check_interval

    def loss_and_logits(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(batch.inputs).logits
        logits = logits[:, -batch.targets.shape[1]:] if logits.ndim == 3 else logits[:, None]
        if batch.targets.shape[1] == 1:
            return F.cross_entropy(logits[:, 0], batch.targets[:, 0]), logits
        ce = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none")
        return (ce * batch.loss_mask.flatten()).sum() / batch.loss_mask.sum(), logits

    def accuracy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        right = (logits.argmax(-1) == batch.targets) & batch.answer_mask
        return right.sum() / batch.answer_mask.sum()

    for step in range(1, steps + 1):
        if step == warmup + 1:
            synchronize(device)
            steady = time.perf_counter()
        loss, logits = loss_and_logits(train)
        optimizer.zero_grad()
        loss.backward()
        if cfg.trainer.gradient_clip_val is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        if step % log_every == 0:
            accuracy(logits, train).item()
        if step % val_every == 0:
            with torch.no_grad():
                val_loss, val_logits = loss_and_logits(val)
                val_loss.item()
                accuracy(val_logits, val).item()
    synchronize(device)
    ended = time.perf_counter()
    return (steps - warmup) / (ended - steady), steps / (ended - started)


def framework(cfg, steps: int) -> tuple[float, float, str]:
    """`launch.run` in a fresh folder. Returns (steady-state, whole-run) steps per second and how it stepped
    (summary.json's `cuda_graph`)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg.paths.output_dir = tmp
        started = time.perf_counter()
        summary = run(cfg)
        import bench.overhead as timed  # the module Hydra imported StepTimer from (this file may be __main__)
        return timed.StepTimer.rates[-1], steps / (time.perf_counter() - started), summary.get("cuda_graph", "?")


def alternating(arms: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Each arm's result per repeat, with the order flipped every repeat so that drift favours no arm."""
    results: dict[str, list[Any]] = {name: [] for name in arms}
    for repeat in range(repeats):
        for name in list(arms) if repeat % 2 == 0 else list(arms)[::-1]:
            results[name].append(arms[name]())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=sorted(ACCELERATOR), default="cpu")
    parser.add_argument("--experiment", default="mlp_grok")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 600 on cpu, 3000 on cuda)")
    parser.add_argument("--warmup", type=int, default=None, help="steps before the steady-state clock starts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for launch.py")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    steps = args.steps or (3000 if args.device == "cuda" else 600)
    warmup = args.warmup if args.warmup is not None else max(steps // 10, 1)
    overrides = [f"experiment={args.experiment}", f"trainer.accelerator={ACCELERATOR[args.device]}",
                 f"trainer.max_steps={steps}", "callbacks.grokking_time.stop_after_steps=null",
                 "+callbacks.step_timer._target_=bench.overhead.StepTimer", f"+callbacks.step_timer.warmup={warmup}",
                 *args.overrides]
    cfg = compose_config(overrides, output_dir=tempfile.gettempdir())
    plain_loop(cfg, max(steps // 4, warmup + 1), warmup, args.device)  # warm up allocator, kernels and clocks
    framework(cfg.copy(), steps)
    speeds = alternating({"plain": lambda: plain_loop(cfg.copy(), steps, warmup, args.device),
                          "framework": lambda: framework(cfg.copy(), steps)}, args.repeats)
    medians = {name: [statistics.median(r[i] for r in runs) for i in (0, 1)] for name, runs in speeds.items()}
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{args.experiment} on {device}, {steps} steps ({warmup} warm-up), {' '.join(args.overrides)}")
    for name, runs in speeds.items():
        print(f"{name:<10}: {medians[name][0]:7.1f} steps/s steady, {medians[name][1]:7.1f} whole run  "
              f"(steady runs: {', '.join(f'{r[0]:.1f}' for r in runs)})")
    print(f"framework step: {', '.join(sorted({r[2] for r in speeds['framework']}))}")
    target = 1.5 if args.device == "cuda" else 0.95
    print(f"throughput ratio framework/plain = {medians['framework'][0] / medians['plain'][0]:.3f} steady, "
          f"{medians['framework'][1] / medians['plain'][1]:.3f} whole run  (target >= {target:.2f})")


if __name__ == "__main__":
    main()

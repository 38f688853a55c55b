"""Throughput of E members trained at once (`hydra/launcher=ensemble`) against the same E runs one after another.

Both arms run the same config (default `nanda_grok`) for the same number of full-batch steps on the same device:
the ensemble arm trains seeds 0..E-1 together (`runtime.engines.ensemble.run_ensemble`, as the launcher does), the sequential
arm runs them as solo runs (`launch.run`, as the basic launcher does). Printed are model-steps/s (members x steps
per second) at steady state (from `--warmup` steps to the end, the device synchronised at both ends) and over the
whole run (set-up, init files, final evaluation included), and the ratio ensemble / sequential. Target on a GPU:
>= 10x for E = 32 on nanda_grok. `--sequential-runs K` times K of the E solo runs and scales (each solo run's
speed does not depend on its seed); by default 4 of them, so that `--members 32` does not wait for 32 solo runs. The
solo runs are as a user gets them: on CUDA their step is captured where it can be (`module.cuda_graph=auto`).

Also printed: the ensemble's achieved FLOP/s, the FLOPs of one training step of the ensemble (forward and backward
of every member on the run's first batch, counted by `torch.utils.flop_counter.FlopCounterMode`: matrix products
and attention, not elementwise ops) times its steady steps/s, and that as a fraction of the device's dense peak at
the run's matmul precision (core/device_peaks.py, read as the throughput callback reads it; `--peak-tflops`
overrides it, and on a CPU, which the table does not know, gives one). Whether the step ran compiled
(`ensemble.compile`, default: on CUDA) is printed with it.

    python bench/ensemble.py [--device cpu|cuda] [--experiment nanda_grok] [--members 32] [--steps 500]
                             [--sequential-runs K] [--peak-tflops T] [overrides...]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.overhead import ACCELERATOR, StepTimer  # noqa: E402
from callbacks.run.throughput import device_peak  # noqa: E402
from launch import run  # noqa: E402
from runtime.config.build import build  # noqa: E402
from runtime.config.compose import compose_config  # noqa: E402
from runtime.engines.ensemble import run_ensemble  # noqa: E402
from runtime.engines.members import Member  # noqa: E402


def configs(overrides: list[str], seeds: range, root: Path):
    return [(seed, compose_config([*overrides, f"seed={seed}"], output_dir=root / str(seed))) for seed in seeds]


class StepFlops(Callback):
    """Counts the FLOPs of one training step of the ensemble before its first step: the members' forward and
    backward on the first batch, eager (a compiled step runs the same matrix products), the gradients dropped after.
    The weights, and so the timed run, are untouched."""

    def __init__(self) -> None:
        self.flops: int | None = None
        self.compiled: bool | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if self.flops is not None:
            return
        self.compiled = module.compiled
        with FlopCounterMode(display=False) as counter:
            total, _ = module.vmapped_step(module.reg_weights(), batch, True)
            total.sum().backward()
        module.stacked.flat.grad = None
        self.flops = counter.get_total_flops()


def ensemble_arm(overrides: list[str], members: int, steps: int, warmup: int) -> tuple[float, float, StepFlops]:
    """(steady, whole-run) model-steps/s of `members` seeds trained together, and the FLOPs of one of its steps."""
    with tempfile.TemporaryDirectory() as tmp:
        built = [Member(cfg, Path(tmp) / str(seed), [f"seed={seed}"],
                        [build(node, "logger") for node in (cfg.logger or {}).values() if node])
                 for seed, cfg in configs(overrides, range(members), Path(tmp))]
        timer, flops = StepTimer(warmup), StepFlops()
        started = time.perf_counter()
        run_ensemble(built, callbacks=[flops, timer])
        whole = time.perf_counter() - started
    return members * StepTimer.rates[-1], members * steps / whole, flops


def sequential_arm(overrides: list[str], runs: int, steps: int, warmup: int) -> tuple[float, float]:
    """(steady, whole-run) model-steps/s of `runs` solo runs one after another."""
    steady, whole = 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for seed, cfg in configs([*overrides, "+callbacks.step_timer._target_=bench.overhead.StepTimer",
                                  f"+callbacks.step_timer.warmup={warmup}"], range(runs), Path(tmp)):
            started = time.perf_counter()
            run(cfg)
            whole += time.perf_counter() - started
            steady += (steps - warmup) / StepTimer.rates[-1]
    return runs * (steps - warmup) / steady, runs * steps / whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=sorted(ACCELERATOR), default="cpu")
    parser.add_argument("--experiment", default="nanda_grok")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--sequential-runs", type=int, default=4, help="solo runs timed and scaled (0: all members)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s at the run's precision (default: core/device_peaks.py's)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for launch.py")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    overrides = [f"experiment={args.experiment}", f"trainer.accelerator={ACCELERATOR[args.device]}",
                 f"trainer.max_steps={args.steps}", "callbacks.grokking_time.stop_after_steps=null",
                 "callbacks.progress.refresh_seconds=1", *args.overrides]
    runs = min(args.sequential_runs or args.members, args.members)  # the sequential arm's speed is per run
    ensemble = ensemble_arm(overrides, args.members, args.steps, args.warmup)
    sequential = sequential_arm(overrides, runs, args.steps, args.warmup)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{args.experiment} on {device}: {args.members} members x {args.steps} steps "
          f"({args.warmup} warm-up); {' '.join(args.overrides)}")
    counted = ensemble[2]
    print(f"ensemble   : {ensemble[0]:8.1f} model-steps/s steady, {ensemble[1]:8.1f} whole run "
          f"(step {'compiled' if counted.compiled else 'eager'})")
    print(flop_line(counted.flops, ensemble[0] / args.members, args, overrides))
    print(f"sequential : {sequential[0]:8.1f} model-steps/s steady, {sequential[1]:8.1f} whole run "
          f"({runs} of {args.members} solo runs timed)")
    print(f"speed-up ensemble/sequential = {ensemble[0] / sequential[0]:.2f}x steady, "
          f"{ensemble[1] / sequential[1]:.2f}x whole run  (target on a GPU: >= 10x for 32 members of nanda_grok)")


def flop_line(step_flops: int, steps_per_second: float, args, overrides: list[str]) -> str:
    """Achieved FLOP/s of the ensemble's steady steps, and its fraction of the device's peak where one is known
    (after the run, which set the float32 matmul precision its config asks for)."""
    achieved = step_flops * steps_per_second
    line = (f"achieved   : {achieved / 1e12:8.3f} TFLOP/s ({step_flops / 1e9:.3f} GFLOP a step of all members, "
            f"{step_flops / args.members / 1e9:.3f} GFLOP a model-step, FlopCounterMode)")
    device = torch.device(ACCELERATOR[args.device].replace("gpu", "cuda"))
    peak = device_peak(device, str(compose_config(overrides).trainer.precision), args.peak_tflops)
    if peak is None:
        return f"{line}; no peak known for {device.type} (--peak-tflops gives the fraction)"
    return f"{line}; {achieved / peak[0]:.1%} of the peak, {peak[0] / 1e12:.1f} TFLOP/s ({peak[1]})"


if __name__ == "__main__":
    main()

"""Framework throughput against a hand-written PyTorch loop on the default MLP task, in one process.

Both train the same MLP (same init, split, AdamW groups, warmup, clipping) for the same number of full-batch
steps, evaluate on the validation split at the same cadence, and compute training accuracy on the same
logging steps. The framework run is `launch.run` as a user gets it (CSV logger, checkpoints, progress bar,
grokking callback). Runs alternate and repeat; the printed ratio is framework steps/s over plain steps/s
(medians). Target on CPU: >= 0.95.

    python bench/overhead.py [--steps 600] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch import build_net, run  # noqa: E402
from runtime.compose import compose_config  # noqa: E402
from hydra.utils import instantiate  # noqa: E402


def plain_loop(cfg, steps: int) -> float:
    """The reference: everything by hand, nothing else. Returns steps per second."""
    started = time.perf_counter()
    data = instantiate(cfg.data)
    pl.seed_everything(cfg.seed, verbose=False)
    net = build_net(cfg.model, data.spec)
    recipe = instantiate(cfg.optimizer)
    optimizer, scheduler = recipe.build(net)
    train, val = data.splits["train"], data.splits["val"]
    x, y = train.inputs, train.targets[:, 0]
    log_every, val_every = cfg.trainer.log_every_n_steps, cfg.trainer.val_check_interval
    for step in range(1, steps + 1):
        logits = net(x).logits
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        if step % log_every == 0:
            (logits.argmax(-1) == y).float().mean().item()
        if step % val_every == 0:
            with torch.no_grad():
                val_logits = net(val.inputs).logits
                F.cross_entropy(val_logits, val.targets[:, 0]).item()
                (val_logits.argmax(-1) == val.targets[:, 0]).float().mean().item()
    return steps / (time.perf_counter() - started)


def framework(cfg, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg.paths.output_dir = tmp
        started = time.perf_counter()
        run(cfg)
        return steps / (time.perf_counter() - started)


def alternating(arms: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each arm's result per repeat, with the order flipped every repeat so that drift favours no arm."""
    results: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(repeats):
        for name in list(arms) if repeat % 2 == 0 else list(arms)[::-1]:
            results[name].append(arms[name]())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for launch.py")
    args = parser.parse_args()
    overrides = [f"trainer.max_steps={args.steps}", "callbacks.progress.refresh_seconds=0.25", *args.overrides]
    cfg = compose_config(overrides, output_dir=tempfile.gettempdir())
    plain_loop(cfg, args.steps // 2)  # warm up allocator, kernels and clocks on both paths
    framework(cfg.copy(), args.steps // 2)
    speeds = alternating({"plain": lambda: plain_loop(cfg.copy(), args.steps),
                          "framework": lambda: framework(cfg.copy(), args.steps)}, args.repeats)
    plain, fw = speeds["plain"], speeds["framework"]
    ratio = statistics.median(fw) / statistics.median(plain)
    print(f"plain loop : {statistics.median(plain):7.1f} steps/s  (runs: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"framework  : {statistics.median(fw):7.1f} steps/s  (runs: {', '.join(f'{v:.1f}' for v in fw)})")
    print(f"throughput ratio framework/plain = {ratio:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()

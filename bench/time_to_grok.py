"""Time to grok with and without Grokfast, from the same initial weights, for each task given.

For each task the two arms share seed, split and init (their summaries' `init_fingerprint` is printed and
checked); the run stops when val acc first reaches the grokking threshold (0.99). Printed: steps and wall
seconds to that point per arm, and the ratios without/with (> 1 means Grokfast is faster). A run that does not
grok within `--max-steps` is reported as such, never as a number.

    python bench/time_to_grok.py [--tasks mlp transformer mlp_p23] [--max-steps 6000] [--grokfast ema] [--lamb 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launch import run  # noqa: E402
from runtime.compose import compose_config  # noqa: E402

TASKS = {
    "mlp": ["experiment=mlp_grok"],  # p=97, 50% train, wd 1: groks in ~4,000 full-batch steps
    # 1 block, p=59, 40% train: memorises by step ~100, val acc 0.99 at ~2,300 (a few minutes on 2 cores)
    "transformer": ["experiment=transformer_grok_cpu", "data.train_fraction=0.4"],
    # the slow-grokking regime Grokfast targets: p=23, 80% train, lr 1e-3 (val acc 0.99 at ~5,500 steps)
    "mlp_p23": ["data.p=23", "data.train_fraction=0.8", "model.hidden_dim=128", "optimizer.lr=1e-3"],
}


def time_to_grok(overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(compose_config([*overrides, "callbacks.grokking_time.stop_after_steps=0"], output_dir=tmp))
    step = summary["grok"].get("grok/val_acc_0.99_step")
    wall = summary["wall_time_s"] * step / summary["steps"] if step else None  # to the grokking step itself
    return {"step": step, "wall": wall, "init": summary["init_fingerprint"], "steps_run": summary["steps"]}


def describe(result: dict) -> str:
    if result["step"] is None:
        return f"not grokked in {result['steps_run']} steps"
    return f"{result['step']:6d} steps {result['wall']:7.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mlp", "transformer"], choices=list(TASKS))
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--grokfast", default="ema", choices=["ema", "ma"])
    parser.add_argument("--lamb", type=float, default=None, help="Grokfast's λ (default: the paper's)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, as for launch.py")
    args = parser.parse_args()
    common = [f"trainer.max_steps={args.max_steps}", "callbacks.progress.refresh_seconds=1", *args.overrides]
    for task in args.tasks:
        plain = time_to_grok([*TASKS[task], *common])
        lamb = [] if args.lamb is None else [f"callbacks.grokfast.lamb={args.lamb}"]
        fast = time_to_grok([*TASKS[task], *common, f"grokfast={args.grokfast}", *lamb])
        assert plain["init"] == fast["init"], "the arms must start from the same weights"
        print(f"{task:12s} without grokfast: {describe(plain)}")
        print(f"{task:12s} with grokfast={args.grokfast} λ={args.lamb or 'default'}: {describe(fast)}   (init {plain['init']})")
        if plain["step"] and fast["step"]:
            print(f"{task:12s} time-to-grok ratio without/with: steps {plain['step'] / fast['step']:.2f}x, "
                  f"wall {plain['wall'] / fast['wall']:.2f}x")
        else:
            print(f"{task:12s} time-to-grok ratio: undefined (an arm did not grok within {args.max_steps} steps)")


if __name__ == "__main__":
    main()

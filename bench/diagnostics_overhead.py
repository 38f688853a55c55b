"""Cost of the diagnostics: the same run with `callbacks=default` and with `callbacks=diagnostics`, in one process.

Both are `launch.run` as a user gets it, same config, same init; only the callback set differs. Runs alternate
and repeat; the printed ratio is (with diagnostics) / (without) in median steps/s. Target: >= 0.85 at the
default cadences. Extra arguments are config overrides, e.g. `experiment=least_action` for a gated net.

    python bench/diagnostics_overhead.py [--steps 2000] [--repeats 2] [overrides...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.overhead import alternating, framework  # noqa: E402
from runtime.config.compose import compose_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for launch.py")
    args = parser.parse_args()
    common = [f"trainer.max_steps={args.steps}", "callbacks.grokking_time.stop_after_steps=null",
              "+callbacks.step_timer._target_=bench.overhead.StepTimer",
              f"+callbacks.step_timer.warmup={args.steps // 10}",
              *args.overrides]
    configs = {name: compose_config([f"callbacks={name}", *common], output_dir=tempfile.gettempdir())
               for name in ("default", "diagnostics")}
    framework(configs["default"].copy(), args.steps)  # warm-up
    speeds = alternating({name: (lambda cfg=cfg: framework(cfg.copy(), args.steps)) for name, cfg in configs.items()},
                         args.repeats)
    speeds = {name: [whole for _, whole in runs] for name, runs in speeds.items()}  # diagnostics at the end count
    base, diag = (statistics.median(speeds[n]) for n in ("default", "diagnostics"))
    for name, values in speeds.items():
        print(f"callbacks={name:<12}: {statistics.median(values):7.1f} steps/s whole run  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"throughput ratio diagnostics/default = {diag / base:.3f}  (target >= 0.85)")


if __name__ == "__main__":
    main()

"""The one entry point: compose the config and live the run (runtime/lifecycle/run.py, the solo engine); a multirun
runs one job per run folder (or `hydra/launcher=ensemble` many at once).

    python launch.py                                        # default experiment (mlp_grok)
    python launch.py experiment=transformer_grok size=cpu   # another experiment, at CPU size
    python launch.py -m optimizer.weight_decay=0.5,1.0 seed=0,1   # a sweep, one run folder per job
"""
from __future__ import annotations

import signal
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from core.errors import ConfigError, RunInterrupted
from runtime.config.override_check import unknown_key_message
from runtime.config.run_dir import register_resolvers
from runtime.engines.solo import SoloEngine
from runtime.lifecycle.run import live


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one configuration (runtime/lifecycle/run.py, with the solo engine); always leaves `summary.json` in
    the run folder, whatever happens. A `resume=true` of a finished run returns its summary without training."""
    engine = SoloEngine(cfg)
    if engine.finished is not None:
        return engine.finished
    return live(engine)[0]


class JobFailed(Exception):
    """One job of a multirun failed (its summary.json says why); the sweep's other jobs still run."""


def fail(message: str) -> None:
    """End this job with `message`: a multirun records it as failed and goes on; a single run exits 1."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        print(message, file=sys.stderr, flush=True)
        raise JobFailed(message)  # an ordinary exception: Hydra records the job as failed and runs the others
    raise SystemExit(message)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except ConfigError as err:
        fail(f"[grokking-lab] error: {err}")
    except RunInterrupted as err:  # a stop signal ends the whole launch (a sweep too), as the shell expects
        raise SystemExit(128 + err.signum) from None
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
    if summary["status"] == "diverged":
        fail(f"[grokking-lab] diverged: {summary['error']}")
    return summary.get("final", {}).get(str(cfg.optimized_metric))  # a sweeper's objective


register_resolvers()  # ${unique_dir:...} in the run and sweep folder names

if __name__ == "__main__":
    if (message := unknown_key_message(sys.argv[1:])) is not None:  # a typo: one line, not Hydra's six
        raise SystemExit(f"[grokking-lab] error: {message}")
    main()

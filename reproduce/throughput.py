"""How long a job takes on one GPU, from the throughputs the newest GPU report measured
(shared/gpu-reports/2026-12-04-h200.md: one H200, fp32 'highest', torch 2.11).

The model has two limits. A process cannot step faster than one run of its experiment alone (`RATES`, steps/s of
whole short runs, set-up included): small models are bound by launching kernels, not by the GPU. And the GPU
cannot do more work than it sustains: a member-step costs F FLOP (the matmuls of one training step, counted on
one forward by torch's FLOP counter, times 3 for the backward), and the GPU sustains `SUSTAINED_FLOPS` when many
members or processes share it. So an ensemble of m members takes max(1 / solo rate, m F / C) a step, and processes
that run side by side take at least their summed GPU work.

C is calibrated on the report's ensemble of 16 `transformer_grok` members (195.5 member-steps/s, set-up included:
73.6 GFLOP a step -> 14.4 TFLOP/s). Checks against the report's other measurements: 32 `nanda_grok` members are
predicted at 989 member-steps/s (measured 1,050); its train-fraction curve (4 processes of 8 members at once, ~13,700
/ 4,100 / 2,500 / 1,600 steps) at ~220 s of GPU work plus set-up (measured 245 s). Language models train in bf16,
whose throughput the report measured only one process at a time: they count as using the whole GPU.
Evaluation is left out of F (every 100-500 steps it is ~1 % of the work; where it is frequent, as the Grokfast
task's every 10 steps, the solo rate includes it and those runs are bound by it, not by the GPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from core.errors import ConfigError

REPORT = "shared/gpu-reports/2026-12-04-h200.md"


@dataclass(frozen=True)
class Rate:
    """One run of an experiment alone on the GPU: `solo` steps/s, and where the figure comes from. `gpu_bound`: its
    throughput beside other processes is unknown (bf16 language models); it is taken to use the whole GPU."""

    solo: float
    basis: str
    gpu_bound: bool = False
    setup_s: float = 0.0  # once per process, besides STARTUP_S (e.g. training a tokenizer)


RATES = {
    "nanda_grok": Rate(323.3, "bench/overhead.py --experiment nanda_grok, framework arm"),
    "transformer_grok": Rate(73.6, "launch.py experiment=transformer_grok trainer.max_steps=400"),
    "routed": Rate(47.4, "launch.py experiment=routed_entropy trainer.max_steps=400 (every routed_* is this net)"),
    "least_action": Rate(100.7, "launch.py experiment=least_action trainer.max_steps=400, measured on the preset "
                                "before it took the study's settings (p=97, 50 % train): the present one (p=113, "
                                "30 %, gates diagnostic every 100 steps) taken as this"),
    "conditions_minibatch": Rate(110.3, "launch.py experiment=conditions_study conditions=r1 (mini-batches of 512)"),
    "conditions_fullbatch": Rate(119.0, "launch.py experiment=conditions_study conditions=r3 (full batch; r5-r8 "
                                        "taken as r3)"),
    "grokfast_paper": Rate(98.6, "launch.py experiment=grokfast_paper trainer.max_steps=400 (validation every 10 "
                                 "steps included)"),
    "moe_expressivity": Rate(97.3, "launch.py experiment=moe_expressivity_moe (the dense, GLU and GLU-expert FFNs "
                                   "taken as this one)"),
    "transformer_moe": Rate(47.4, "not measured: a 4-expert FFN in transformer_grok, taken as slow as the routed "
                                  "net (4 FFN heads)"),
    "mqar_softmax": Rate(115.7, "launch.py experiment=mqar trainer.max_steps=400"),
    "mqar_gdn": Rate(38.6, "not measured: GDN's PyTorch chunked form, taken at a third of softmax's rate (on a CPU "
                           "it took twice softmax's time)"),
    "hybrid_static": Rate(3.7, "launch.py experiment=hybrid_static model.gdn.kernel=torch, 60 steps (bf16)",
                          gpu_bound=True, setup_s=120.0),
    "hybrid_dynamic": Rate(3.5, "launch.py experiment=hybrid_dynamic model.gdn.kernel=torch, 60 steps (bf16)",
                           gpu_bound=True, setup_s=120.0),
}
# The calibration: the report's ensemble of 16 transformer_grok members, 195.5 member-steps/s (set-up included)
CALIBRATION = (["experiment=transformer_grok"], 195.5)
STARTUP_S = 30.0   # per process: Python, imports, CUDA context, the task on the device, final evaluation
SLOTS = 8          # processes at once on one GPU machine (16 cores: two each)
GRACE_S = 30.0     # from SIGTERM to SIGKILL at the deadline: a run finishes its step, evaluates and writes its files


def rate(key: str) -> Rate:
    if key not in RATES:
        raise ConfigError("rate", key, f"an entry of reproduce/throughput.py RATES: {', '.join(RATES)}")
    return RATES[key]


@lru_cache(maxsize=None)
def flops_per_step(overrides: tuple[str, ...]) -> float:
    """FLOP of one training step of the run `overrides` compose: the matmuls of a forward over one training batch
    (counted by torch's FLOP counter on a few examples and scaled up: every net, not only those that count their
    own FLOPs as nets/parts/flops.py's LMs do), times its TRAINING_PER_FORWARD for the backward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nets.parts.flops import TRAINING_PER_FORWARD
    from runtime.config.build import build, build_net
    from runtime.config.compose import compose_config

    cfg = compose_config(list(overrides))
    task = build(cfg.data, "data")
    torch.manual_seed(0)
    net = build_net(cfg.model, task.spec)
    batch = next(iter(task.train_dataloader()))
    probe = batch.inputs[:8]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(probe)
    return TRAINING_PER_FORWARD * counter.get_total_flops() * batch.inputs.shape[0] / probe.shape[0]


@lru_cache(maxsize=None)
def sustained_flops() -> float:
    """FLOP/s the GPU sustains for these models (see the module's docstring)."""
    overrides, member_steps_per_s = CALIBRATION
    return flops_per_step(tuple(overrides)) * member_steps_per_s


@dataclass(frozen=True)
class Cost:
    """One process's estimate: `alone_s` on the GPU by itself (set-up included), `gpu_s` of the GPU's work."""

    alone_s: float
    gpu_s: float


def process_cost(key: str, members: int, steps: int, overrides: Sequence[str]) -> Cost:
    """A process of `members` runs of `overrides` (an ensemble when > 1), `steps` steps each."""
    entry = rate(key)
    if entry.gpu_bound:
        per_step = members / entry.solo
        gpu = steps * per_step
    else:
        flops = flops_per_step(tuple(overrides))
        gpu = steps * members * flops / sustained_flops()
        per_step = max(1 / entry.solo, members * flops / sustained_flops())
    return Cost(alone_s=STARTUP_S + entry.setup_s + steps * per_step, gpu_s=gpu)


def part_estimate(costs: Sequence[Cost], slots: int = SLOTS) -> float:
    """Wall time of processes run `slots` at a time, longest first: the longer of that schedule and their summed
    GPU work (plus one start-up)."""
    free = [0.0] * max(1, slots)
    for cost in sorted(costs, key=lambda c: c.alone_s, reverse=True):
        slot = free.index(min(free))
        free[slot] += cost.alone_s
    work = sum(cost.gpu_s for cost in costs) + (STARTUP_S if costs else 0.0)
    return max(max(free), work)

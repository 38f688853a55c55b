"""The least-action study (seed 001): a compute cost on gated layers should buy lower effective depth at comparable
accuracy. The seed is a plan, not results: its headline figures are the plan's success criteria."""
from __future__ import annotations

from reproduce.headlines import Final, Headline, Last, Reach, Trend
from reproduce.suite import Part, RunSpec, Study, seeds

LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # phase 2 of the plan and the steps between (sweep=compute_lambda)
SOURCE = "the least-action study's plan (seed 001)"
GPU_STEPS = 40000


# an ensemble runs no diagnostics callback; the module logs gates/effective_depth itself (the callback draws plots)
NO_PLOTS = "callbacks.gates=null"


def runs(size: str) -> list[RunSpec]:
    if size == "gpu":  # 21 members in one ensemble; one process alone runs ~100 steps/s, so 50,000 do not fit
        return [RunSpec("least_action", {"lambda": lam}, seed, GPU_STEPS,
                        (NO_PLOTS, f"regularizer.compute.weight={lam}"), source_steps=50000)
                for lam in LAMBDAS for seed in seeds(size, 3, 2)]
    toy = ("size=cpu", "data.p=13", "trainer.val_check_interval=25", "trainer.log_every_n_steps=25", NO_PLOTS)
    return [RunSpec("least_action", {"lambda": lam}, seed, 200, (*toy, f"regularizer.compute.weight={lam}"))
            for lam in (0.001, 1.0) for seed in seeds(size, 3, 2)]


DEPTH, ACC, STEPS = "effective depth", "final val acc", "steps to val acc 0.99"
STUDY = Study(
    name="least_action",
    title="The least-action study: compute cost λ against effective depth",
    source=f"{SOURCE}: a 10-layer gated residual MLP (sigmoid gates) with cost λ · Σ gates; its ExperimentConfig as "
           "experiment=least_action sets it (one-hot addition mod 113, 30 % train, full batch, AdamW lr 1e-3, "
           "wd 0.1, 50,000 steps)",
    parts=(Part("least_action", "λ from 0.001 to 1 (phase 2), 3 seeds each, one ensemble", runs),),
    measures={DEPTH: Last("gates/effective_depth"), ACC: Final("val/acc"), STEPS: Reach("grok/val_acc_0.99_step")},
    headlines=(
        Trend("effective depth falls as λ grows", DEPTH, {}, "falls", "falls",
              "Networks trained with λ > 0 achieve comparable accuracy with measurably lower effective depth",
              f"{SOURCE}, section 8 (minimum viable result)", x="lambda"),
        Headline("final val acc at λ = 0.01 (the plan's default)", ACC, {"lambda": 0.01}, None, "-",
                 "comparable accuracy", f"{SOURCE}, section 8 (no figure)"),
        Headline("effective depth at λ = 0.01 (of 10 layers)", DEPTH, {"lambda": 0.01}, None, "-",
                 "layers 'turning off'", f"{SOURCE}, section 4 (no figure)"),
        Headline("steps to val acc 0.99 at λ = 0.001", STEPS, {"lambda": 0.001}, None, "-",
                 "Does compute pressure accelerate grokking?", f"{SOURCE}, phase 2 (a question)"),
        Headline("steps to val acc 0.99 at λ = 0.1", STEPS, {"lambda": 0.1}, None, "-",
                 "Does compute pressure accelerate grokking?", f"{SOURCE}, phase 2 (a question)"),
    ),
    figure_x="lambda",
    figure_y=DEPTH,
    notes=("The plan's ExperimentConfig has 50,000 full-batch epochs; 40,000 steps here (one process alone runs ~100 "
           "steps/s on the GPU, so 50,000 do not fit 9 minutes). The preset trains on after grokking.",),
)

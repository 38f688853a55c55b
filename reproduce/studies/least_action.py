"""The least-action study (seed 001): a compute cost on gated layers should buy lower effective depth at comparable
accuracy. The seed is a plan, not results: its headline figures are the plan's success criteria."""
from __future__ import annotations

from reproduce.headlines import Final, Headline, Last, Reach, Trend
from reproduce.suite import Part, RunSpec, Study, seeds

LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # phase 2 of the plan and the steps between (sweep=compute_lambda)
SOURCE = "the least-action study's plan (seed 001)"


def runs(size: str) -> list[RunSpec]:
    if size == "gpu":  # all 35 members in one ensemble: ~5.7 GFLOP a member-step
        return [RunSpec("least_action", {"lambda": lam}, seed, 20000, (f"regularizer.compute.weight={lam}",),
                        source_steps=50000) for lam in LAMBDAS for seed in seeds(size, 5, 2)]
    toy = ("data.p=13", "data.train_fraction=0.8", "optimizer.lr=3e-3", "trainer.val_check_interval=25",
           "callbacks.grokking_time.stop_after_steps=50")
    return [RunSpec("least_action", {"lambda": lam}, seed, 200, (*toy, f"regularizer.compute.weight={lam}"))
            for lam in (0.001, 1.0) for seed in seeds(size, 5, 2)]


DEPTH, ACC, STEPS = "effective depth", "final val acc", "steps to val acc 0.99"
STUDY = Study(
    name="least_action",
    title="The least-action study: compute cost λ against effective depth",
    source=f"{SOURCE}: a 10-layer gated residual MLP (sigmoid gates) with cost λ · Σ gates; the project's preset "
           "experiment=least_action (one-hot addition mod 97, 50 % train, AdamW wd 1)",
    parts=(Part("least_action", "λ from 0.001 to 1 (phase 2), 5 seeds each, one ensemble", runs),),
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
    notes=("The plan's ExperimentConfig has 50,000 epochs; 20,000 steps here (the preset stops 500 steps after val acc "
           "0.99).",),
)

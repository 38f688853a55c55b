"""The conditions-for-grokking study (seed 003): eight runs at p = 97 over 50K steps; none groks. Answer-only loss
generalises at once (or oscillates with weight decay); loss on every position memorises without weight decay and
generalises at once with it.

Each wd pair (r1/r2, r3/r4, r5/r6, r7/r8) differs only in weight decay (r2 is r1 with wd 1, and so on), so it is
one ensemble whose members start from the same weights (the same seed, 1337, as the source), as the source copied
one init to both runs. Full length
does not fit one part: three parts, and r3/r4 (2 layers, full batch: 80 GFLOP a step) capped at 40,000 steps.
"""
from __future__ import annotations

from reproduce.headlines import Dynamics, Final, Headline, Label
from reproduce.suite import Part, RunSpec, Study

SEED = 1337
RATES = {"r1": "conditions_minibatch", "r2": "conditions_minibatch"}
GPU_STEPS = {"r3": 40000, "r4": 40000}
SOURCE = "the conditions-for-grokking study's notes (seed 003)"
# the source's table (Runs Summary): dynamics, final train and val loss at 50K steps
TABLE = {
    "r1": ("instant generalisation", 0.0001), "r2": ("oscillation", 0.116), "r3": ("instant generalisation", 0.0),
    "r4": ("oscillation", 0.0441), "r5": ("instant generalisation", 0.0001), "r6": ("instant generalisation", 0.0119),
    "r7": ("memorisation", 2.511), "r8": ("instant generalisation", 1.384),
}
WORDS = {"r1": "No — instant generalization", "r2": "No — unstable oscillation", "r3": "No — instant generalization",
         "r4": "No — oscillating with spikes", "r5": "No — instant generalization",
         "r6": "No — stable, no memorization", "r7": "No — pure memorization",
         "r8": "No — immediate generalization"}


# each run as the wd-0 run of its pair plus its weight decay, so that a pair differs only in a packable value
PAIRS = {"r1": ("r1", 0.0), "r2": ("r1", 1.0), "r3": ("r3", 0.0), "r4": ("r3", 1.0), "r5": ("r5", 0.0),
         "r6": ("r5", 1.0), "r7": ("r7", 0.0), "r8": ("r7", 1.0)}


def overrides(run: str) -> tuple[str, ...]:
    base, wd = PAIRS[run]
    return (f"conditions={base}", f"optimizer.weight_decay={wd}")


def runs_of(names: tuple[str, ...]):
    def runs(size: str) -> list[RunSpec]:
        if size == "gpu":
            return [RunSpec("conditions_study", {"run": r}, SEED, GPU_STEPS.get(r, 50000), overrides(r),
                            source_steps=50000, rate=RATES.get(r, "conditions_fullbatch")) for r in names]
        toy = ("size=cpu", "data.p=11", "trainer.val_check_interval=25", "trainer.log_every_n_steps=25")
        return [RunSpec("conditions_study", {"run": r}, SEED, 150, (*toy, *overrides(r)),
                        rate=RATES.get(r, "conditions_fullbatch")) for r in names]
    return runs


DYNAMICS, VAL_LOSS, TRAIN_LOSS = "dynamics", "final val loss", "final train loss"
STUDY = Study(
    name="conditions",
    title="Conditions for grokking: loss masking, weight decay, batch, depth (r1-r8)",
    source=f"{SOURCE}: p = 97 addition, sequences [BOS, a, OP, b, EQ, c, EOS, EOS], lr 1e-3, β2 0.98, 50K steps, "
           "seed 1337 (experiment conditions_study, conditions=r1..r8)",
    parts=(Part("conditions_answer", "r1, r2 (2 layers, batch 512, 3-way split) and r5, r6 (1 layer, full batch): "
                "answer-only loss", runs_of(("r1", "r2", "r5", "r6"))),
           Part("conditions_full_batch", "r3, r4: 2 layers, full batch, answer-only loss (capped at 40,000 steps)",
                runs_of(("r3", "r4"))),
           Part("conditions_all_positions", "r7, r8: 1 layer, full batch, loss on all positions",
                runs_of(("r7", "r8")))),
    measures={DYNAMICS: Dynamics(), VAL_LOSS: Final("val/loss"), TRAIN_LOSS: Final("train/loss")},
    headlines=(
        *(Label(f"{r}: dynamics", DYNAMICS, {"run": r}, TABLE[r][0], TABLE[r][0], WORDS[r],
                f"{SOURCE}, Runs Summary") for r in TABLE),
        Headline("r7: final val loss (memorising: rising)", VAL_LOSS, {"run": "r7"}, 2.511, "2.511",
                 "Val climbs monotonically from 1.64 to 2.51 over 50K steps", f"{SOURCE}, Phase 2", rel=0.1),
        Headline("r8: final val loss (bound 1.307 when generalised)", VAL_LOSS, {"run": "r8"}, 1.384, "1.384",
                 "val stabilizes at ~1.38 (close to the 1.307 theoretical minimum)", f"{SOURCE}, Phase 2", abs=0.05),
        Headline("r7: final train loss (below the bound: memorised)", TRAIN_LOSS, {"run": "r7"}, 1.057, "1.057",
                 "Train converges to 1.057 (below theoretical 1.307)", f"{SOURCE}, Phase 2", abs=0.05),
    ),
    figure_x="run",
    figure_y=VAL_LOSS,
    notes=("Dynamics are named from the answer accuracy curves by analysis/dynamics.py (instant generalisation, "
           "grokking, oscillation, memorisation, ...); the source named them from its loss curves.",
           "r7's val loss was still rising at 50K: a run stopped earlier ends lower. Losses are read within 10 % "
           "(r7) or 0.05 nats (r8, and r7's train loss), the source's own rounding and step-to-step wobble."),
)

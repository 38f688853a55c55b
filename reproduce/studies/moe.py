"""The MoE-expressivity study (seed 002): what the FFN type (dense, GLU, experts) does in a one-layer transformer
that adds 7 to reversed digits; and a dense FFN against a mixture of experts on modular addition.

The seed has no MoE figure ("MoE implementation coming soon"); the FFN-type rows compare with this project's own CPU
measurement of the same runs (docs/reproductions.md section 6), so a change at scale or on another device shows.
Mixtures of experts route tokens by the data (no vmap) and the study stops early (no ensemble callback): every run
is its own process.
"""
from __future__ import annotations

from reproduce.headlines import Final, Headline, Ratio, Reach
from reproduce.suite import Part, RunSpec, Study, seeds

TYPES = {"dense": "moe_expressivity_ffn", "glu": "moe_expressivity_glu", "moe": "moe_expressivity_moe",
         "moe_glu": "moe_expressivity_moe_glu"}
CPU_MEAN = {"dense": 0.970, "glu": 0.960, "moe": 0.910, "moe_glu": 0.900}  # docs section 6, seeds 0-4
MOE = ("model/ffn=moe", "regularizer=moe", "model.ffn.n_experts=4", "model.ffn.top_k=1", "model.ffn.match=dense_total")
MODULAR_CPU = ("size=cpu", "data.p=11", "trainer.val_check_interval=25", "trainer.log_every_n_steps=25")


def runs(size: str) -> list[RunSpec]:
    ffn_types = [RunSpec(experiment, {"task": "add7", "ffn": ffn}, seed, 5000 if size == "gpu" else 100,
                         () if size == "gpu" else ("trainer.val_check_interval=25",), rate="moe_expressivity",
                         ensemble=False)
                 for ffn, experiment in TYPES.items() for seed in seeds(size, 5, 1)]
    steps, extra = (10000, ()) if size == "gpu" else (100, MODULAR_CPU)
    modular = [RunSpec("transformer_grok", {"task": "modular", "ffn": "dense"}, seed, steps, extra,
                       rate="transformer_grok") for seed in seeds(size, 3, 2)]
    modular += [RunSpec("transformer_grok", {"task": "modular", "ffn": "moe"}, seed, steps, (*extra, *MOE),
                        rate="transformer_moe", ensemble=False) for seed in seeds(size, 3, 1)]
    return ffn_types + modular


EXACT, STEPS = "final val exact match", "steps to val acc 0.95"
CPU_WHERE = "this project's CPU runs, docs/reproductions.md section 6 (mean over seeds 0-4); the seed has no figure"
STUDY = Study(
    name="moe",
    title="MoE expressivity: the four FFN types, and dense FFN vs MoE on modular addition",
    source="the MoE-expressivity study (seed 002: '+7' on reversed digits, one-layer transformer, d_model 64; "
           "experiments moe_expressivity_*), and transformer_grok (p = 113, 30 % train) with a dense or a "
           "4-expert top-1 FFN of equal parameters",
    parts=(Part("moe", "4 FFN types x 5 seeds on +7; dense vs MoE FFN on modular addition, 3 seeds each", runs),),
    measures={EXACT: Final("val/exact_match"), STEPS: Reach("grok/val_acc_0.95_step")},
    headlines=(
        *(Headline(f"{ffn}: final val exact match (+7, 2 digits)", EXACT, {"task": "add7", "ffn": ffn},
                   CPU_MEAN[ffn], f"{CPU_MEAN[ffn]:.3f} (CPU)", "MoE implementation coming soon", CPU_WHERE,
                   abs=0.05) for ffn in TYPES),
        Headline("modular addition, dense FFN: steps to val acc 0.95", STEPS, {"task": "modular", "ffn": "dense"},
                 4600, "~4,600", "Standard Transformer: ~4,600 epochs to 95 % test acc",
                 "the routed-transformer study's notes (seed 000), finding 3", rel=0.1),
        Headline("modular addition, MoE FFN: steps to val acc 0.95", STEPS, {"task": "modular", "ffn": "moe"},
                 None, "-", "the MoE comparison on modular addition", "issue 26 (no source figure)"),
        Ratio("modular addition: MoE over dense, steps to val acc 0.95", STEPS, {"task": "modular", "ffn": "moe"},
              None, "-", "-", "no source figure", over={"task": "modular", "ffn": "dense"}),
    ),
    figure_x="ffn",
    figure_y=EXACT,
    figure_hue="task",
    notes=("Exact match of 20 held-out numbers moves in steps of 0.05: the CPU means are read within 0.05 of the "
           "seeds' range.",),
)

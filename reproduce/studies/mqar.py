"""Multi-query associative recall (Zoology, Arora et al. 2023): softmax attention recalls every key-value pair; a
fixed-state mixer (Gated DeltaNet, a state of 16 x 16 per head) degrades as the pairs outgrow its state.

One size, the one it was designed at (docs/reproductions.md section 8); the GPU adds seeds and length. The figures
compared are this project's own CPU measurement of the same runs (seed 0), at the step it was taken."""
from __future__ import annotations

from reproduce.headlines import AtStep, Final, Headline, Trend
from reproduce.suite import Part, RunSpec, Study, seeds

MIXERS = {"softmax": ("model.layers=[attn]", "mqar_softmax"), "gdn": ("model.layers=[gdn]", "mqar_gdn")}
PAIRS = (8, 16, 32)
CPU_WHERE = "this project's CPU runs, docs/reproductions.md section 8 (seed 0)"


def runs(size: str) -> list[RunSpec]:
    specs = []
    for mixer, (layers, rate) in MIXERS.items():
        for pairs in (PAIRS if size == "gpu" else (8,)):
            common = (layers, f"data.n_pairs={pairs}", "callbacks.token_routing=null")
            if size == "cpu":
                common += ("data.n_train=2000", "data.n_val=200", "trainer.val_check_interval=15",
                           "trainer.log_every_n_steps=15")
            specs += [RunSpec("mqar", {"mixer": mixer, "pairs": pairs}, seed, 5000 if size == "gpu" else 30, common,
                              rate=rate) for seed in seeds(size, 5, 2)]
    return specs


AT_1500, AT_2000, FINAL = "val acc at step 1,500", "val acc at step 2,000", "final val acc"
STUDY = Study(
    name="mqar",
    title="Multi-query associative recall: softmax attention against Gated DeltaNet over the number of pairs",
    source="Zoology (Arora et al. 2023) for the claim; this project's CPU measurement for the figures (experiment "
           "mqar: one layer, d_model 64, 4 heads of width 16, short convolutions, 32 queries)",
    parts=(Part("mqar", "softmax and GDN at 8 / 16 / 32 pairs, 5 seeds each, 5,000 steps", runs),),
    measures={AT_1500: AtStep("val/acc", 1500), AT_2000: AtStep("val/acc", 2000), FINAL: Final("val/acc")},
    headlines=(
        Headline("softmax, 32 pairs: val acc at step 1,500", AT_1500, {"mixer": "softmax", "pairs": 32}, 1.0, "1.00",
                 "32 pairs: 0.74 at step 399, 1.00 at 499", CPU_WHERE, abs=0.02),
        Headline("GDN, 8 pairs: val acc at step 1,500", AT_1500, {"mixer": "gdn", "pairs": 8}, 0.97, "0.97",
                 "0.97 at 1,499", CPU_WHERE, abs=0.05),
        Headline("GDN, 16 pairs: val acc at step 1,500", AT_1500, {"mixer": "gdn", "pairs": 16}, 0.82, "0.82",
                 "0.82 at 1,499 (rising by 0.01 per 100 steps)", CPU_WHERE, abs=0.05),
        Headline("GDN, 32 pairs: val acc at step 2,000", AT_2000, {"mixer": "gdn", "pairs": 32}, 0.008, "~0.008",
                 "at chance (0.007-0.008) through 2,000 steps", CPU_WHERE, abs=0.02),
        Trend("GDN recall falls as the pairs grow", AT_1500, {"mixer": "gdn"}, "falls", "falls",
              "fixed-state mixers degrade as the pairs outgrow their state", "Zoology (Arora et al. 2023)",
              x="pairs"),
        Headline("GDN, 32 pairs: val acc after 5,000 steps", FINAL, {"mixer": "gdn", "pairs": 32}, None, "-",
                 "Whether GDN at 32 pairs would reach some partial recall with much longer training was not "
                 "measured", f"{CPU_WHERE} (an open question)"),
    ),
    figure_x="pairs",
    figure_y=AT_1500,
    figure_hue="mixer",
    notes=("The CPU figures are one seed's: read within 0.05 (0.02 at chance and at 1.00).",),
)

"""Nanda et al. (2023): modular addition groks; the steps it takes fall as the training fraction grows."""
from __future__ import annotations

from reproduce.headlines import Headline, Reach, Trend
from reproduce.suite import Part, RunSpec, Study, seeds

# GPU: the report's curve (4 fractions x 8 seeds, 16,000 steps) took 4.1 minutes with every member grokked; the
# larger fractions get caps of ~2x the slowest seed the report measured (+ the 1,000 steps it trains on after), so
# that the plan stays within the budget even if no member stopped early
GPU_STEPS = {0.3: 16000, 0.4: 7000, 0.5: 4000, 0.7: 3000}
CPU_FRACTIONS = (0.3, 0.7)


def runs(size: str) -> list[RunSpec]:
    if size == "gpu":
        return [RunSpec("nanda_grok", {"fraction": f}, seed, steps, (f"data.train_fraction={f}",),
                        source_steps=40000, rate="nanda_grok")
                for f, steps in GPU_STEPS.items() for seed in seeds(size, 8, 2)]
    toy = ("size=cpu", "data.p=23", "trainer.val_check_interval=25", "trainer.log_every_n_steps=25",
           "callbacks.grokking_time.stop_after_steps=50")
    return [RunSpec("nanda_grok", {"fraction": f}, seed, 100, (*toy, f"data.train_fraction={f}"), rate="nanda_grok")
            for f in CPU_FRACTIONS for seed in seeds(size, 8, 2)]


STUDY = Study(
    name="nanda",
    title="Nanda et al. (2023): grokking of modular addition over the training fraction",
    source="Nanda, Chan, Lieberum, Smith, Steinhardt, 'Progress measures for grokking via mechanistic "
           "interpretability' (ICLR 2023), and their training code (experiment nanda_grok)",
    parts=(Part("nanda", "the training-fraction curve: 4 fractions x 8 seeds, one ensemble per fraction", runs),),
    measures={"steps to val acc 0.99": Reach("grok/val_acc_0.99_step"),
              "steps to train acc 0.99": Reach("grok/train_acc_0.99_step")},
    headlines=(
        Headline("steps to val acc 0.99 at 30 % train (p = 113)", "steps to val acc 0.99", {"fraction": 0.3},
                 10000, "~10,000", "test accuracy jumps around 10k steps",
                 "Nanda et al. 2023 (mainline run, p = 113, 30 % train), as docs/reproductions.md section 1 gives it",
                 rel=0.25),
        Trend("steps to val acc 0.99 fall as the training fraction grows", "steps to val acc 0.99", {}, "falls",
              "falls", "more data, sooner generalisation",
              "Power et al. 2022 and Nanda et al.'s train-fraction sweep (mod_addition_frac_train_sweep.pth); "
              "direction only", x="fraction"),
        Headline("steps to train acc 0.99 at 30 % train (memorisation first)", "steps to train acc 0.99",
                 {"fraction": 0.3}, None, "-", "memorisation, then circuit formation and clean-up",
                 "Nanda et al. 2023, their three phases (no step count given)"),
    ),
    figure_x="fraction",
    figure_y="steps to val acc 0.99",
    notes=("'~10,000' is read loosely: the seeds' range is widened by 25 % either side before comparing.",),
)

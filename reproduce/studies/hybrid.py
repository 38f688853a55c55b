"""The hybrid-LM study (seed 004): a 4-layer LM of Gated DeltaNet and softmax layers, static against per-token
routing, at the seed's size (hidden 768, 12 heads, windows of 1,024, batch 48, 1,000 steps in bf16).

One run of each alone takes ~4.5 minutes on the GPU (3.7 and 3.5 steps/s in the report, bf16, GDN's PyTorch form:
fla's kernel failed there under autocast); the report measured no two side by side, so each is a part of its own. The
first run trains the BPE tokenizer and tokenises the corpus (~2 minutes, cached for the second).
"""
from __future__ import annotations

from reproduce.headlines import Final, Headline, Last, SummaryValue
from reproduce.suite import Part, RunSpec, Study

SOURCE = "the hybrid-LM study's notes (seed 004, 'Experiment 11: Dynamic Per-Token Layer Routing')"
CPU = ("size=cpu", "model.d_model=32", "model.n_heads=2", "data.seq_len=32", "data.batch_size=4",
       "data.eval_windows=4", "trainer.val_check_interval=10", "trainer.log_every_n_steps=5",
       "callbacks.token_routing.every_n_steps=10", "optimizer.warmup_steps=5")


def run(layers: str):
    experiment = f"hybrid_{layers}"

    def runs(size: str) -> list[RunSpec]:
        if size == "gpu":
            return [RunSpec(experiment, {"layers": layers}, 0, 1000, ("model.gdn.kernel=torch",), ensemble=False)]
        return [RunSpec(experiment, {"layers": layers}, 0, 20, CPU, ensemble=False)]
    return runs


VAL, BPB, SPEED, MFU, PARAMS = "final val loss", "final val bits per byte", "train tokens/s", "train MFU", "parameters"
SHARE = "share to softmax, layer 1"
STUDY = Study(
    name="hybrid",
    title="The hybrid LM: static Gated DeltaNet / softmax layers against per-token routing",
    source=f"{SOURCE}: [gdn, gdn, gdn, attn] against [gdn, routed, routed, attn], lr 1e-3 / 2e-3, on the offline "
           "corpus with a BPE of 8,192 (experiments hybrid_static, hybrid_dynamic)",
    parts=(Part("hybrid_static", "the static layers, 1,000 steps", run("static")),
           Part("hybrid_dynamic", "per-token routing (the seed's lr 2e-3), 1,000 steps", run("dynamic"))),
    measures={VAL: Final("val/loss"), BPB: Final("val/bits_per_byte"),
              SPEED: SummaryValue("speed.train_tokens_per_s", "speed/train_tokens_per_s"),
              MFU: SummaryValue("speed.mfu", "speed/mfu"), PARAMS: SummaryValue("parameters"),
              SHARE: Last("routing/eval_share/layer_1/softmax")},
    headlines=(
        Headline("parameters, static", PARAMS, {"layers": "static"}, 50e6, "~50M", "Params: ~50M",
                 f"{SOURCE}, Configuration", rel=0.1),
        Headline("parameters, dynamic", PARAMS, {"layers": "dynamic"}, 50e6, "~50M", "Params: ~50M",
                 f"{SOURCE}, Configuration", rel=0.1),
        Headline("final val loss, static", VAL, {"layers": "static"}, None, "-", "Validation loss (primary metric)",
                 f"{SOURCE}, Metrics to Track (no figure)"),
        Headline("final val loss, dynamic", VAL, {"layers": "dynamic"}, None, "-", "Validation loss (primary metric)",
                 f"{SOURCE}, Metrics to Track (no figure)"),
        Headline("val bits per byte, static", BPB, {"layers": "static"}, None, "-", "Perplexity",
                 f"{SOURCE}, Metrics to Track (no figure)"),
        Headline("val bits per byte, dynamic", BPB, {"layers": "dynamic"}, None, "-", "Perplexity",
                 f"{SOURCE}, Metrics to Track (no figure)"),
        Headline("training tokens/s, static", SPEED, {"layers": "static"}, None, "-", "Tokens/second throughput",
                 f"{SOURCE}, Metrics to Track (no figure)"),
        Headline("training tokens/s, dynamic", SPEED, {"layers": "dynamic"}, None, "-", "Tokens/second throughput",
                 f"{SOURCE}, Metrics to Track (no figure)"),
        Headline("model FLOPs utilisation, static", MFU, {"layers": "static"}, None, "-", "Tokens/second throughput",
                 f"{SOURCE}, Metrics to Track (no figure; MFU from callbacks/run/throughput.py)"),
        Headline("model FLOPs utilisation, dynamic", MFU, {"layers": "dynamic"}, None, "-",
                 "Tokens/second throughput",
                 f"{SOURCE}, Metrics to Track (no figure; MFU from callbacks/run/throughput.py)"),
        Headline("dynamic: share of tokens to softmax, layer 1 (eval)", SHARE, {"layers": "dynamic"}, None, "-",
                 "Encourages ~50/50 split between GDN and Softmax for each layer (the balance loss's aim)",
                 f"{SOURCE}, Load Balancing Loss (no result)"),
    ),
    figure_x="layers",
    figure_y=VAL,
    notes=("One seed, as the source. 'Params: ~50M' is read within 10 %.",),
)

"""The hybrid-LM study end to end on CPU: a small static hybrid learns the default corpus far below its byte unigram
entropy; a dynamic run with compute-saving routing logs its routing (shares, entropy, balance, the annealed
temperature, speed) and draws its figures; `python -m analysis.compare` puts the two side by side."""
from __future__ import annotations

import contextlib
import csv
import io

import pytest
from matplotlib import colors

from runtime.config.compose import compose_config
from tests.conftest import final_routing, metrics_rows, record_figures, run_quietly, token_routing_of_final_weights

# the CPU presets shrunk further: windows of 64 bytes, d_model 64, two layers
TINY = ["data.seq_len=64", "data.batch_size=16", "data.eval_windows=32", "model.d_model=64", "model.n_heads=2",
        "optimizer.warmup_steps=10", "trainer.val_check_interval=50", "trainer.log_every_n_steps=10", "threads=1",
        "callbacks.progress.refresh_seconds=1000", "callbacks.checkpoint.every_n_train_steps=100000"]
STATIC = ["experiment=hybrid_static", "size=cpu", "model.layers=[gdn,attn]", "optimizer.lr=3e-3",
          "trainer.max_steps=150"]
DYNAMIC = ["experiment=hybrid_dynamic", "size=cpu", "model.layers=[gdn,routed,attn]", "model.routing_mode=sparse",
           "trainer.max_steps=40", "callbacks.token_routing.every_n_steps=20",
           "callbacks.throughput.peak_tflops=0.001"]  # a peak for the MFU, which a CPU does not have by itself


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (summary, run folder, what it printed)} of a static and a dynamic run."""
    import callbacks.diagnostics.token_routing

    base, results = tmp_path_factory.mktemp("hybrid_lm"), {}
    for name, overrides in (("static", STATIC), ("dynamic", DYNAMIC)):
        with pytest.MonkeyPatch.context() as patch:
            FIGURES[name] = record_figures(patch, callbacks.diagnostics.token_routing)
            summary, printed = run_quietly([*overrides, *TINY], base / name)
        results[name] = (summary, base / name, printed)
    return results


FIGURES = {}  # {run name: {figure name: Figure}}: what the token-routing diagnostic drew in each run


def test_a_short_cpu_run_predicts_bytes_far_below_their_unigram_entropy(runs):
    from runtime.config.build import build
    from runtime.config.compose import compose_config

    summary, _, _ = runs["static"]
    task = build(compose_config([*STATIC, *TINY]).data, "data")  # the run's data, for its split's unigram entropy
    assert summary["status"] == "completed", summary.get("error")
    unigram = task.unigram_entropy_bits("val")  # 4.53 bits for the val split of pydoc_data on Python 3.11
    final = summary["final"]
    assert final["val/bits_per_byte"] < 0.75 * unigram, (final, unigram)
    # the three LM numbers are one number: ppl = e^loss, bits = loss / ln 2 (one byte per token)
    assert final["val/perplexity"] == pytest.approx(2.718281828 ** final["val/loss"], rel=1e-5)
    assert final["val/bits_per_byte"] == pytest.approx(final["val/loss"] / 0.693147181, rel=1e-5)
    assert summary["corpus"]["name"] == "pydoc_data" and summary["corpus"]["size_bytes"] > 100_000
    speed = summary["speed"]
    assert speed["train_tokens"] == 150 * 16 * 64 and speed["train_tokens_per_s"] > 0 and speed["val_tokens_per_s"] > 0
    # model FLOPs: the net's own count of a training step per token (3 forwards), times tokens/s; on a CPU no MFU
    assert speed["model_flops_per_token"] == pytest.approx(model_flops_per_token([*STATIC, *TINY], 64), rel=1e-12)
    assert speed["train_model_flops_per_s"] == pytest.approx(
        speed["model_flops_per_token"] * speed["train_tokens_per_s"], rel=1e-9)
    assert not {"mfu", "peak", "peak_flops_per_s"} & set(speed)


def model_flops_per_token(overrides, seq_len):
    """A training step's FLOPs per token of the net these overrides build, counted afresh (nets/parts/flops.py)."""
    from nets.parts.flops import flops_per_token
    from runtime.config.build import build, build_net
    from runtime.config.compose import compose_config

    cfg = compose_config(overrides)
    return flops_per_token(build_net(cfg.model, build(cfg.data, "data").spec), seq_len)


def test_a_routed_run_with_a_given_peak_reports_its_mfu_and_the_overflow_of_its_capacity(runs):
    """Sparse routing's count is its capacity's (whatever the routing); MFU = model FLOP/s over the given peak
    (0.001 TFLOP/s); metrics.csv has them and the share of tokens over softmax's capacity on logging steps."""
    summary, run_dir, _ = runs["dynamic"]
    speed = summary["speed"]
    assert speed["model_flops_per_token"] == pytest.approx(model_flops_per_token([*DYNAMIC, *TINY], 64), rel=1e-12)
    assert speed["peak"] == "given (peak_tflops)" and speed["peak_flops_per_s"] == 1e9
    assert speed["mfu"] == pytest.approx(speed["train_model_flops_per_s"] / 1e9, rel=1e-12)
    assert speed["train_model_flops_per_s"] == pytest.approx(
        speed["model_flops_per_token"] * speed["train_tokens_per_s"], rel=1e-9)
    rows = metrics_rows(run_dir)
    logged = lambda key: [float(row[key]) for row in rows if row.get(key)]  # noqa: E731
    tflops, mfu = logged("speed/train_tflops"), logged("speed/mfu")
    assert len(tflops) == len(mfu) == 4 and all(m == pytest.approx(t * 1e3, rel=1e-5) for t, m in zip(tflops, mfu))
    overflow = logged("routing/overflow/layer_1")
    assert len(overflow) == 4 and all(0 <= value <= 1 for value in overflow)


def test_a_routed_run_logs_its_routing_and_draws_it(runs):
    summary, run_dir, printed = runs["dynamic"]
    assert summary["status"] == "completed", summary.get("error")
    rows = metrics_rows(run_dir)
    last = {key: float(value) for row in rows for key, value in row.items() if value}  # last logged value of each
    for layer in ("layer_1",):
        assert last[f"routing/share/{layer}/gdn"] + last[f"routing/share/{layer}/softmax"] == pytest.approx(1.0)
        assert last[f"routing/eval_share/{layer}/gdn"] + last[f"routing/eval_share/{layer}/softmax"] == \
            pytest.approx(1.0)
        assert 0 <= last[f"routing/eval_entropy/{layer}"] <= 0.6932
        assert 1.0 <= last[f"routing/eval_balance/{layer}"] <= 2.0  # E * sum f P: 1 balanced .. 2 collapsed
    assert 1.0 <= last["train/reg/balance"] <= 2.0
    # the diagnostic's last values are the final weights' routing of its validation probe, counted here token by
    # token (rel 1e-5: the diagnostic averages 512 tokens' entropies in float32)
    expected = token_routing_of_final_weights([*DYNAMIC, *TINY], run_dir)
    assert set(expected) == {"routing/eval_share/layer_1/gdn", "routing/eval_share/layer_1/softmax",
                             "routing/eval_entropy/layer_1", "routing/eval_balance/layer_1"}  # text: no answers
    for key, value in expected.items():
        assert last[key] == pytest.approx(value, rel=1e-5), key
    temperatures = [float(row["gates/temperature"]) for row in rows if row.get("gates/temperature")]
    # annealed linearly from 1.0 to 0.5 over the 40 steps: step 39 trains at 1 - 0.5 * 39 / 40
    assert temperatures == sorted(temperatures, reverse=True) and temperatures[-1] == pytest.approx(0.5125)
    assert {"routing_tokens.png", "routing_over_training.png"} <= {p.name for p in (run_dir / "plots").iterdir()}
    assert "token_routing: stands aside" not in printed


def test_each_run_says_once_which_gdn_kernel_ran(runs):
    from nets.kernels.fla_choice import fla_refusal

    refused = fla_refusal()  # on a CPU: fla not installed, or no CUDA device
    expected = f"torch ({refused})" if refused is not None else "torch (the run is on cpu)"
    for summary, _, printed in runs.values():
        assert summary["gdn_kernel"] == expected
        assert printed.count("GDN kernel:") == 1 and f"[grokking-lab] GDN kernel: {expected}\n" in printed


def test_the_routing_figures_draw_what_was_logged_and_the_final_choices(runs):
    from callbacks.diagnostics.token_routing import OPTION_COLOURS, printable

    _, run_dir, _ = runs["dynamic"]
    rows, figures = metrics_rows(run_dir), FIGURES["dynamic"]
    # over training: share to softmax, entropy and balance of layer_1 at each measurement (steps 0, 20, 40)
    panels = figures["routing/over_training"].axes
    for ax, key in zip(panels, ("eval_share/layer_1/softmax", "eval_entropy/layer_1", "eval_balance/layer_1")):
        (line,) = ax.get_lines()[:1]
        assert list(line.get_xdata()) == [0, 20, 40] and line.get_label() == "layer_1"
        logged = [float(row[f"routing/{key}"]) for row in rows if row.get(f"routing/{key}")]
        assert list(line.get_ydata()) == pytest.approx(logged, rel=1e-6), key
    # the sample: the first probe window's 64 bytes, each on the colour of the option layer_1 sent it to
    probe, aux, options = final_routing([*DYNAMIC, *TINY], run_dir)
    choices = aux["layer_1/mixer/expert_index"][0, :, 0].tolist()
    (ax,) = figures["routing/tokens"].axes
    tokens = probe.inputs[0].tolist()
    assert len(ax.texts) == len(tokens) == len(choices) == 64
    assert [colors.to_hex(text.get_bbox_patch().get_facecolor()) for text in ax.texts] == [
        OPTION_COLOURS[c] for c in choices]
    ascii_bytes = [(text.get_text(), t) for text, t in zip(ax.texts, tokens) if t < 128]
    assert len(ascii_bytes) > 32 and all(glyph == printable(chr(t))[0] for glyph, t in ascii_bytes)
    share = sum(c == options.index("softmax") for c in choices) / len(choices)
    assert ax.get_title().startswith(f"layer_1: {share:.0%} of these tokens to softmax")


def test_the_static_run_stands_the_routing_diagnostic_aside(runs):
    assert "token_routing: stands aside (the net has no routed layers" in runs["static"][2]


def test_compare_puts_static_and_dynamic_side_by_side(runs, tmp_path):
    from analysis.compare import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([str(runs["static"][1]), str(runs["dynamic"][1]), "--out", str(tmp_path)]) == 0
    with open(tmp_path / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["run"].split()[0] for row in table] == ["hybrid_static_cpu", "hybrid_dynamic_cpu"]
    static, dynamic = table
    assert float(static["val/loss"]) == pytest.approx(runs["static"][0]["final"]["val/loss"])
    assert static["softmax_share/layer_1"] == "" and 0 <= float(dynamic["softmax_share/layer_1"]) <= 1
    assert float(dynamic["train_tokens_per_s"]) > 0 and int(static["parameters"]) > 0
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    # the figure: a run's logged validation losses over steps done and over its wall time spread evenly; only the
    # static run has any (the dynamic run's 40 steps end before its first validation, every 50 steps)
    from analysis.compare import comparison, loss_curves_figure
    frame, compared = comparison([runs["static"][1], runs["dynamic"][1]])
    by_step, by_time = loss_curves_figure(compared, frame).axes
    (on_steps,), (on_time,) = by_step.get_lines(), by_time.get_lines()
    assert on_steps.get_label() == on_time.get_label() == frame["run"][0]
    summary, run_dir, _ = runs["static"]
    logged = [(int(r["step"]) + 1, float(r["val/loss"])) for r in metrics_rows(run_dir) if r.get("val/loss")]
    assert [step for step, _ in logged] == [50, 100, 150]
    assert list(on_steps.get_xdata()) == [50, 100, 150]
    assert list(on_steps.get_ydata()) == pytest.approx([loss for _, loss in logged], rel=1e-9)
    seconds_per_step = summary["wall_time_s"] / summary["steps"]
    assert list(on_time.get_xdata()) == pytest.approx([50 * seconds_per_step, 100 * seconds_per_step,
                                                       150 * seconds_per_step], rel=1e-9)
    assert list(on_time.get_ydata()) == list(on_steps.get_ydata())
    assert "| hybrid_static_cpu" in printed.getvalue()


def test_the_bench_hands_the_users_overrides_to_every_arm():
    """`bench/hybrid_routing.py --set model.gdn.kernel=torch` once still ran fla: the bench's own kernel setting came
    after the user's overrides. Every arm's net carries what the user set; the arms differ only in their layers and
    routing mode (and, with --kernels, the kernel), and overriding those is refused."""
    from bench.hybrid_routing import STATIC, arm_config, arm_net, arm_settings, check_overrides
    from nets import GatedDeltaNet

    user = ["model.gdn.kernel=torch", "model.d_model=32", "model.n_heads=2", "model.gdn.conv_size=2"]
    for layers, mode in ((STATIC, "dense"), (["gdn", "routed", "attn"], "sparse")):
        net, cfg = arm_net("hybrid_dynamic", ["size=cpu", *user], arm_settings(layers, mode), "cpu", "natural")
        gdn_layers = [m for m in net.modules() if isinstance(m, GatedDeltaNet)]
        assert len(gdn_layers) == layers.count("gdn") + layers.count("routed")
        assert all(m.kernel == "torch" and not m.runs_fla and m.q_conv.conv.kernel_size == (2,) for m in gdn_layers)
        assert (cfg.model.d_model, list(cfg.model.layers), cfg.model.routing_mode) == (32, layers, mode)
    timed = arm_config("hybrid_dynamic", ["size=cpu", "model.d_model=32"], arm_settings(STATIC, "dense", "fla"))
    assert timed.model.gdn.kernel == "fla" and timed.model.d_model == 32
    with pytest.raises(SystemExit, match=r"^--set model.routing_mode=sparse is not allowed: the bench times dense"):
        check_overrides(["model.d_model=32", "model.routing_mode=sparse"], kernels=False)
    with pytest.raises(SystemExit, match=r"^--set model.gdn.kernel=torch is not allowed: --kernels times"):
        check_overrides(["model.gdn.kernel=torch"], kernels=True)
    check_overrides(["model.gdn.kernel=torch", "model.layers=[gdn,routed]"], kernels=False)  # these reach the arms


def test_the_bench_gives_sparse_routing_a_capacity_for_the_share_it_forces():
    """1.25 x the forced share of each block (factor 2.5 x share); the preset's for the routers' own decisions;
    the user's when given; dense arms have none."""
    from bench.hybrid_routing import arm_config, arm_settings

    routed = ["gdn", "routed", "attn"]
    assert arm_settings(routed, "sparse", share="0.25")["model.routing_capacity_factor"] == "0.625"
    assert arm_settings(routed, "sparse", share="0.1")["model.routing_capacity_factor"] == "0.25"
    assert "model.routing_capacity_factor" not in arm_settings(routed, "sparse", share="natural")
    assert "model.routing_capacity_factor" not in arm_settings(routed, "dense", share="0.25")
    user = ("model.routing_capacity_factor=2",)
    assert "model.routing_capacity_factor" not in arm_settings(routed, "sparse", share="0.25", overrides=user)
    cfg = arm_config("hybrid_dynamic", ["size=cpu", *user],
                     arm_settings(routed, "sparse", share="0.25", overrides=user))
    assert cfg.model.routing_capacity_factor == 2


def test_the_bench_builds_the_vocabulary_the_preset_trains_with():
    """At the seed's size the net's embedding is the BPE's (its width is a large share of the FLOPs); at CPU size
    bytes. Read from the config, so the bench needs no corpus."""
    from bench.hybrid_routing import vocabulary

    assert vocabulary(compose_config(["experiment=hybrid_dynamic"])) == 8192
    assert vocabulary(compose_config(["experiment=hybrid_dynamic", "data.vocab_size=4096"])) == 4096
    assert vocabulary(compose_config(["experiment=hybrid_dynamic", "size=cpu"])) == 256

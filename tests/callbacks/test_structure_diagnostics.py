"""Gate, routing, attention and grokking-curve diagnostics in real short runs: their numbers, PNGs and resume."""
import pandas as pd
import pytest
import torch

from datamodules.task import at_answers
from lightning_modules.routing_regularizers import entropy

FAST = ["callbacks=diagnostics", "callbacks.gates.every_n_steps=10", "callbacks.routing.every_n_steps=20",
        "callbacks.attention.every_n_steps=20", "callbacks.grokking_curves.plot_every_n_steps=20"]
ROUTED = ["experiment=routed_cpu", "data.p=7", "model.d_model=16", "model.n_heads=2"]


def metrics(run_dir):
    return pd.read_csv(run_dir / "metrics.csv")


def test_gated_run_draws_gate_heatmap_and_grokking_curves(run_config):
    summary, run_dir = run_config([*FAST, "experiment=least_action", "model.n_layers=3", "model.hidden_dim=16",
                                   "regularizer.compute.weight=0.5"])
    assert summary["status"] == "completed"
    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert {"gates_evolution.png", "gates_depth_vs_accuracy.png", "grok_curves.png"} <= plots
    assert not {"routing_head_map.png", "attention_maps.png"} & plots  # no routing or attention in a gated MLP


def test_routing_diagnostics_measure_the_whole_grid(run_config):
    from runtime.config.build import build_net  # the same net rebuilt from the final checkpoint's weights
    summary, run_dir = run_config([*FAST, *ROUTED])
    assert summary["status"] == "completed"
    assert {"routing_head_map.png", "routing_entropy.png", "attention_maps.png"} <= {
        p.name for p in (run_dir / "plots").glob("*.png")}
    logged = metrics(run_dir)
    last = logged[["step", "routing/decisiveness/layer_0", "routing/eval_entropy/layer_0"]].dropna().iloc[-1]
    assert last["step"] == 39  # measured after the 40th and last step

    # recompute independently from the final weights on all 7 x 7 inputs, read at the last input position
    from datamodules import ModularArithmetic
    from runtime.config.compose import compose_config
    cfg = compose_config([*FAST, *ROUTED], output_dir=run_dir)
    data = ModularArithmetic(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    net = build_net(cfg.model, data.spec)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net.eval()
    with torch.no_grad():
        weights = net(data.grid().inputs).routing[0][:, -1]
    assert weights.shape == (49, 4)
    assert last["routing/decisiveness/layer_0"] == pytest.approx(weights.max(-1).values.mean().item(), rel=1e-4)
    assert last["routing/eval_entropy/layer_0"] == pytest.approx(entropy(weights).mean().item(), rel=1e-4)


def test_at_answers_reads_token_nets_where_the_answer_is():
    w = torch.arange(2 * 5 * 4.0).reshape(2, 5, 4)  # (N, T_in, heads)
    last = torch.ones(2, 1, dtype=torch.bool)  # tokens format: one target, at the last position
    assert torch.equal(at_answers(w, last), w[:, -1])
    middle = torch.zeros(2, 3, dtype=torch.bool)
    middle[:, 1] = True  # 3 targets aligned with the last 3 positions: the answer is input position 5 - 3 + 1 = 3
    assert torch.equal(at_answers(w, middle), w[:, 3])
    two = torch.zeros(2, 5, dtype=torch.bool)
    two[:, -2:] = True  # two answer tokens: example-major rows
    assert torch.equal(at_answers(w, two), w[:, -2:].reshape(4, 4))
    assert torch.equal(at_answers(w[:, 0], last), w[:, 0])  # one-hot nets: one row per example


def test_multi_op_routing_draws_usage_by_operation(run_config):
    summary, run_dir = run_config([*FAST, *ROUTED, "data.operations=[add,mul]"])
    assert (run_dir / "plots" / "routing_usage_by_operation.png").stat().st_size > 5000


def test_diagnostic_history_survives_resume(run_config):
    common = [*FAST, "experiment=least_action", "model.n_layers=2", "model.hidden_dim=16",
              "callbacks.checkpoint.every_n_train_steps=10"]
    _, first = run_config([*common, "trainer.max_steps=20"], name="first")
    _, resumed = run_config([*common, "trainer.max_steps=40", f"ckpt_path={first}/checkpoints/last.ckpt"],
                            name="resumed")
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    gates = next(v for k, v in ckpt["callbacks"].items() if k.startswith("GateDiagnostics"))
    assert [h["step"] for h in gates["history"]] == [0, 10, 20, 30, 40]
    curves = next(v for k, v in ckpt["callbacks"].items() if k.startswith("GrokkingCurves"))
    assert [h["step"] for h in curves["history"]] == [10, 20, 30, 40]


def test_figures_reach_wandb_offline(run_config, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary, run_dir = run_config([*FAST, *ROUTED, "logger=wandb"])
    assert summary["status"] == "completed"
    media = list((run_dir / "wandb").glob("offline-run-*/files/media/images/**/*.png"))
    assert any("head_map" in p.name for p in media) and any("curves" in p.name for p in media)

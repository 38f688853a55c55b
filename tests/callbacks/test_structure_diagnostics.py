"""Gate, routing, attention and grokking-curve diagnostics in real short runs: their numbers, PNGs and resume."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from core.output import NetOutput
from datamodules.task import at_answers
from regularizers.routing import entropy
from tests.conftest import SMALL, rebuilt

FAST = ["callbacks=diagnostics", "callbacks.gates.every_n_steps=10", "callbacks.routing.every_n_steps=20",
        "callbacks.attention.every_n_steps=20", "callbacks.grokking_curves.plot_every_n_steps=20"]
ROUTED = ["experiment=routed_none", "size=cpu", "data.p=7", "model.d_model=16", "model.n_heads=2"]


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
    summary, run_dir = run_config([*FAST, *ROUTED])
    assert summary["status"] == "completed"
    assert {"routing_head_map.png", "routing_entropy.png", "attention_maps.png"} <= {
        p.name for p in (run_dir / "plots").glob("*.png")}
    logged = metrics(run_dir)
    last = logged[["step", "routing/decisiveness/layer_0", "routing/eval_entropy/layer_0"]].dropna().iloc[-1]
    assert last["step"] == 39  # measured after the 40th and last step

    # recompute independently from the final weights on all 7 x 7 inputs, read at the last input position
    module, data = rebuilt([*SMALL, *FAST, *ROUTED], run_dir / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        weights = module.net(data.grid().inputs).routing[0][:, -1]
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


class PlantedRouting(torch.nn.Module):
    """A routed net whose routing is planted: at the answer position (the last of a tokens row [a, op, b, =]) head
    (a + op index) % 4 gets 0.7 and the others 0.1 each; every other position is uniform."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, inputs):
        n, t = inputs.shape
        weights = torch.full((n, t, 4), 0.25)
        favoured = (inputs[:, 0] + inputs[:, 1] - self.p) % 4  # the op token of operation i is p + i
        weights[:, -1] = 0.1 + 0.6 * F.one_hot(favoured, 4)
        return NetOutput(torch.zeros(n, t, self.p), aux={"layer_0/ffn/routing": weights})


class Holder(torch.nn.Module):
    """What a diagnostic reads of a LightningModule: `net`, `device`, the training mode."""

    device = torch.device("cpu")

    def __init__(self, net):
        super().__init__()
        self.net = net


def test_routing_by_operation_and_the_head_map_are_the_planted_routing(tmp_path, drawn_figures):
    import callbacks.diagnostics.routing
    from callbacks.diagnostics.routing import RoutingDiagnostics
    from datamodules import ModularArithmetic

    p = 7
    task, module = ModularArithmetic(p=p, operations=["add", "mul"], format="tokens"), Holder(PlantedRouting(p))
    trainer = SimpleNamespace(datamodule=task, global_step=40, default_root_dir=str(tmp_path), loggers=[],
                              is_global_zero=True)
    figures = drawn_figures(callbacks.diagnostics.routing)
    callback = RoutingDiagnostics()
    callback.setup(trainer, module, "fit")
    metrics = callback.measure(trainer, module)
    callback.plot(trainer, module)

    # head j's mean weight over an operation's equations: b takes every value for every a, so it is the mean
    # over a of 0.1 + 0.6 [(a + op) % 4 == j]
    expected = np.array([[0.1 + 0.6 * np.mean([(a + op) % 4 == j for a in range(p)]) for j in range(4)]
                         for op in range(2)])
    assert not np.allclose(expected[0], expected[1])  # the operations route differently
    np.testing.assert_allclose(callback.usage_by_op[0], expected, rtol=1e-6)
    (ax,) = [a for a in figures["routing/usage_by_operation"].axes if a.get_images()]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), expected, rtol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["add", "mul"]
    # the first operation's grid, a-major: the argmax head is a % 4 for every b
    head_map = [a for a in figures["routing/head_map"].axes if a.get_images()][0].get_images()[0].get_array()
    np.testing.assert_array_equal(head_map, [[a % 4] * p for a in range(p)])
    # read at the answer of every add equation: 0.7 the largest weight, H(0.7, 0.1, 0.1, 0.1) the entropy
    h = -(0.7 * np.log(0.7) + 3 * 0.1 * np.log(0.1))
    assert metrics == pytest.approx({"routing/decisiveness/layer_0": 0.7, "routing/eval_entropy/layer_0": h},
                                    rel=1e-6)
    (line,) = figures["routing/entropy"].axes[0].get_lines()
    assert list(line.get_xdata()) == [40] and line.get_ydata()[0] == pytest.approx(h, rel=1e-6)


def test_a_multi_op_run_draws_usage_by_operation_of_its_final_weights(run_config, drawn_figures):
    import callbacks.diagnostics.routing

    figures = drawn_figures(callbacks.diagnostics.routing)
    overrides = [*FAST, *ROUTED, "data.operations=[add,mul]"]
    _, run_dir = run_config(overrides)
    (ax,) = [a for a in figures["routing/usage_by_operation"].axes if a.get_images()]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["add", "mul"]
    # recomputed from the final weights on every equation, read at the last input position [a, op, b, =]
    module, task = rebuilt([*SMALL, *overrides], run_dir / "checkpoints" / "last.ckpt")
    inputs = task.modular_structure().all.inputs
    with torch.no_grad():
        weights = module.net(inputs).routing[0][:, -1]
    expected = torch.stack([weights[inputs[:, 1] == 7 + op].mean(0) for op in range(2)])  # op tokens: p + i
    np.testing.assert_allclose(ax.get_images()[0].get_array(), expected.numpy(), rtol=1e-4)


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


def test_per_input_gate_measures_on_planted_gates():
    from callbacks.diagnostics.gates import per_input_measures

    gates = torch.tensor([[1.0, 1.0, 1.0, 1.0],    # add: every layer, depth 4, exits after layer 4
                          [1.0, 0.9, 0.01, 0.0],   # add: layers 3 and 4 off, depth 1.91, exits after 2
                          [0.5, 0.02, 0.5, 0.0],   # mul: layer 2 off but layer 3 on: exits after 3
                          [0.0, 0.0, 0.0, 0.0]])   # mul: every layer off, depth 0, exits at once
    group = torch.tensor([0, 0, 1, 1])
    measured = per_input_measures(gates, group, ("add", "mul"), off_below=0.05)
    depths = torch.tensor([4.0, 1.91, 1.02, 0.0])
    expected = {"gates/depth_per_input/mean": depths.mean().item(), "gates/depth_per_input/std": depths.std().item(),
                "gates/depth_per_input/min": 0.0, "gates/depth_per_input/max": 4.0,
                "gates/depth_per_input/add": 2.955, "gates/depth_per_input/mul": 0.51,
                "gates/off_share/layer_0": 0.25, "gates/off_share/layer_1": 0.5, "gates/off_share/layer_2": 0.5,
                "gates/off_share/layer_3": 0.75, "gates/early_exit_share": 0.75, "gates/exit_layer/mean": 2.25}
    assert measured.keys() == expected.keys()
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, abs=1e-6), name
    one_task = per_input_measures(gates, torch.zeros(4, dtype=torch.long), ("all",), off_below=0.6)
    assert "gates/depth_per_input/all" not in one_task  # by operation only where there are several
    # at 0.6 input 2's 0.5 gates are off too: it exits at once, as input 3 does (exits after 4, 2, 0, 0 layers)
    assert one_task["gates/off_share/layer_0"] == 0.5 and one_task["gates/exit_layer/mean"] == 1.5


def test_input_gated_run_logs_depth_per_input_by_operation_on_every_equation(run_config):
    overrides = [*FAST, "model=gated_mlp", "regularizer=compute_sum", "model.n_layers=3", "model.hidden_dim=16",
                 "model.gate_scope=input", "model.gate_init=0.5", "data.operations=[add,mul]", "data.p=7"]
    summary, run_dir = run_config(overrides)
    assert summary["status"] == "completed"
    assert "gates_depth_per_input.png" in {p.name for p in (run_dir / "plots").glob("*.png")}
    last = metrics(run_dir).dropna(subset=["gates/depth_per_input/mean"]).iloc[-1]
    assert last["step"] == 39
    # recomputed from the final weights over every equation (7 x 7 of each operation), as the diagnostic reads them
    module, task = rebuilt([*SMALL, *overrides], run_dir / "checkpoints" / "last.ckpt")
    probe = task.modular_structure().all
    with torch.no_grad():
        gates = module.net(probe.inputs).gates
    assert gates.shape == (98, 3)
    depth = gates.sum(-1)
    assert last["gates/depth_per_input/mean"] == pytest.approx(depth.mean().item(), rel=1e-5)
    for index, op in enumerate(("add", "mul")):
        assert last[f"gates/depth_per_input/{op}"] == pytest.approx(depth[probe.group == index].mean().item(), rel=1e-5)
    assert last["gates/off_share/layer_0"] == pytest.approx((gates[:, 0] < 0.05).float().mean().item())

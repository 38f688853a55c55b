import csv
import math

import pytest
import torch

from core.errors import ConfigError
from core.output import NetOutput
from lightning_modules import DecayPolicy
from lightning_modules.param_groups import split_by_decay
from nets import GatedMLP
from regularizers.compute_cost import ComputeCost
from tests.conftest import metrics_rows

# The least-action net and its default cost on the default task (mlp_grok's p, 50 % train, weight decay 1, 10 warmup
# steps): what `experiment=least_action` was before it followed its study's settings (p=113, 30 % train, weight
# decay 0.1, 500 warmup steps, seed 42). These tests measure the net and its costs, so they keep that setting.
GATED = ["model=gated_mlp", "regularizer=compute_sum"]


def net(**kw):
    torch.manual_seed(0)
    return GatedMLP(in_features=6, num_classes=3, hidden_dim=8, n_layers=4, **kw)


def test_straight_through_gates_are_exactly_zero_or_one_and_pass_gradients():
    model = net(gate_type="straight_through", gate_init=0.5)
    with torch.no_grad():
        model.gate_logits.copy_(torch.tensor([2.0, -1.0, 0.3, -0.2]))
    out = model(torch.randn(5, 6))
    assert out.gates.tolist() == [1.0, 0.0, 1.0, 0.0]
    out.logits.sum().backward()
    assert model.gate_logits.grad is not None and torch.all(model.gate_logits.grad[[0, 2]] != 0)


def test_gumbel_gates_are_random_in_training_and_sigmoid_in_eval():
    model = net(gate_type="gumbel", gate_init=0.5, temperature=1.0)
    a, b = model.gates(), model.gates()
    assert not torch.equal(a, b) and torch.all((a > 0) & (a < 1))
    model.eval()
    torch.testing.assert_close(model.gates(), torch.full((4,), 0.5))


def test_gate_init_and_layer_scaling():
    model = net(gate_init=0.5)
    torch.testing.assert_close(model.gates(), torch.full((4,), 0.5))
    with torch.no_grad():
        model.gate_logits.fill_(-1e4)  # every gate off: the net is embed -> head
    x = torch.randn(2, 6)
    torch.testing.assert_close(model(x).logits, model.head(model.embed(x)))


def test_gates_are_the_only_declared_no_decay_parameters():
    _, exempt = split_by_decay(net(), DecayPolicy(biases=True))
    assert exempt == ["gate_logits"]


@pytest.mark.parametrize("kind, expected", [("sum", 2.0), ("weighted", 2.0), ("entropy", 2 * 0.6931472),
                                            ("sum+entropy", 2.0 + 2 * 0.6931472)])
def test_compute_costs_on_known_gates(kind, expected):
    gates = torch.tensor([1.0, 0.0, 0.5, 0.5])
    cost = ComputeCost(kind, 0.1).term(NetOutput(logits=torch.zeros(1), gates=gates, layer_flops=torch.ones(4)))
    assert cost.item() == pytest.approx(expected, abs=1e-4)


def test_weighted_cost_counts_heavier_layers_more():
    out = NetOutput(logits=torch.zeros(1), gates=torch.ones(2), layer_flops=torch.tensor([1.0, 0.25]))
    assert ComputeCost("weighted", 1.0).term(out).item() == pytest.approx(1.25)


def gate_gradient(model, kind, x):
    """(penalty, d penalty / d gate logits) of compute cost `kind` on the net's gates."""
    model.zero_grad()
    cost = ComputeCost(kind, 1.0).term(model(x))
    cost.backward()
    return cost.detach(), model.gate_logits.grad.clone()


def test_unequal_widths_make_weighted_and_sum_differ():
    model = GatedMLP(in_features=6, num_classes=3, hidden_dims=[16, 8, 8, 4], gate_init=0.5)
    with torch.no_grad():
        model.gate_logits.copy_(torch.tensor([0.3, -0.2, 1.0, 0.5]))
    x = torch.randn(5, 6)
    total, grad_sum = gate_gradient(model, "sum", x)
    weighted, grad_weighted = gate_gradient(model, "weighted", x)
    relative = torch.tensor([16.0**2, 8.0**2, 8.0**2, 4.0**2]) / 16.0**2  # each layer's matmul, heaviest = 1
    torch.testing.assert_close(model.layer_flops, torch.tensor([2.0 * w * w for w in (16, 8, 8, 4)]))
    g = torch.sigmoid(model.gate_logits.detach())
    torch.testing.assert_close(weighted, (g * relative).sum())
    assert weighted < total - 0.5
    torch.testing.assert_close(grad_weighted, grad_sum * relative)
    assert not torch.allclose(grad_weighted, grad_sum)


def test_equal_widths_make_weighted_the_sum_times_the_per_layer_flops_over_the_heaviest():
    model = net(gate_init=0.5)
    with torch.no_grad():
        model.gate_logits.copy_(torch.tensor([0.3, -0.2, 1.0, 0.5]))
    x = torch.randn(5, 6)
    flops = 2.0 * 8 * 8  # the known count: hidden_dim=8, one 8 x 8 matmul per layer
    assert model.layer_flops.tolist() == [flops] * 4
    total, grad_sum = gate_gradient(model, "sum", x)
    weighted, grad_weighted = gate_gradient(model, "weighted", x)
    torch.testing.assert_close(weighted, total * (flops / flops), rtol=1e-7, atol=0)
    torch.testing.assert_close(grad_weighted, grad_sum * (flops / flops), rtol=1e-7, atol=0)


def test_one_width_is_the_plain_gated_net_with_the_same_initial_weights():
    torch.manual_seed(0)
    listed = GatedMLP(in_features=6, num_classes=3, hidden_dims=[8, 8, 8, 8], hidden_dim=None, n_layers=None)
    plain = net()
    assert set(plain.state_dict()) == {"embed.weight", "embed.bias", "head.weight", "head.bias", "gate_logits"} | {
        f"layers.{i}.{p}" for i in range(4) for p in ("weight", "bias")}  # no projections
    for (name, a), (_, b) in zip(listed.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_closed_gate_skips_its_layer_and_widths_change_through_projections_alone():
    model = GatedMLP(in_features=6, num_classes=3, hidden_dims=[16, 8, 8, 4])
    assert [type(p).__name__ for p in model.projections] == ["Identity", "Linear", "Identity", "Linear"]
    assert model.projections[1].weight.shape == (8, 16) and model.projections[3].weight.shape == (4, 8)
    x = torch.randn(5, 6)
    with torch.no_grad():
        model.gate_logits[1] = -1e4  # layer 1 off: its weights change nothing
        before = model(x).logits
        model.layers[1].weight.normal_()
        torch.testing.assert_close(model(x).logits, before, rtol=0, atol=0)
        model.gate_logits.fill_(-1e4)  # every gate off: embed -> projections -> head
        h = model.projections[3](model.projections[1](model.embed(x)))
        torch.testing.assert_close(model(x).logits, model.head(h))


@pytest.mark.parametrize("kw, allowed", [
    (dict(hidden_dims=[8, 4], hidden_dim=8), "null while model.hidden_dim or model.n_layers is set"),
    (dict(hidden_dims=[8, 4], n_layers=2), "null while model.hidden_dim or model.n_layers is set"),
    (dict(hidden_dims=[]), "a non-empty list of positive integers"),
    (dict(hidden_dims=[8, 0]), "a non-empty list of positive integers"),
    (dict(hidden_dims=8), "a non-empty list of positive integers"),
])
def test_bad_widths_are_one_line_errors_under_the_model_group(kw, allowed):
    with pytest.raises(ConfigError) as info:
        GatedMLP(in_features=6, num_classes=3, **kw)
    message = str(info.value.under("model"))
    assert info.value.key == "hidden_dims" and message.startswith("model.hidden_dims=") and allowed in message
    assert "\n" not in message


def test_bad_gate_settings():
    with pytest.raises(ConfigError):
        net(gate_type="relu")
    with pytest.raises(ConfigError):
        net(gate_init=0.0)
    with pytest.raises(ConfigError):
        ComputeCost("flops", 0.1)


def final_effective_depth(run_dir):
    with open(run_dir / "metrics.csv") as f:
        values = [float(r["gates/effective_depth"]) for r in csv.DictReader(f) if r.get("gates/effective_depth")]
    return values[-1]


@pytest.mark.rounding
def test_compute_cost_lowers_effective_depth_from_the_same_init(run_config):
    common = [*GATED, "data.p=11", "model.hidden_dim=32", "model.n_layers=6",
              "model.gate_init=0.5", "optimizer.lr=1e-2", "trainer.max_steps=200", "trainer.log_every_n_steps=20"]
    _, free = run_config([*common, "regularizer.compute.weight=0.0"], name="free")
    _, pressed = run_config([*common, "regularizer.compute.weight=0.5"], name="pressed")
    free_depth, pressed_depth = final_effective_depth(free), final_effective_depth(pressed)
    print(f"effective depth after 200 steps: lambda=0 {free_depth:.3f}, lambda=0.5 {pressed_depth:.3f}")
    assert pressed_depth < free_depth - 1.0


@pytest.mark.parametrize("preset, plus_sum", [("compute_entropy", False), ("compute_sum_entropy", True)])
def test_entropy_compute_costs_as_configured_log_their_definition_on_the_logged_gates(run_config, preset, plus_sum):
    """`regularizer=compute_entropy` and `compute_sum_entropy` in a short run of the least-action net: on every
    logged row the term is sum_l H(g_l) (plus sum_l g_l) of that row's gates, and the total loss adds the preset's
    λ = 0.01 times it to the task loss (rel 1e-5: float32 sums of 3 gates and of 2 losses)."""
    _, run_dir = run_config([*GATED, f"regularizer={preset}", "data.p=11", "model.hidden_dim=16",
                             "model.n_layers=3", "model.gate_init=0.5", "optimizer.lr=1e-2"])
    rows = [row for row in metrics_rows(run_dir) if row.get("train/reg/compute")]
    assert [int(row["step"]) for row in rows] == [9, 19, 29, 39]
    for row in rows:
        gates = [float(row[f"gates/layer_{i}"]) for i in range(3)]
        term = sum(-(g * math.log(g) + (1 - g) * math.log(1 - g)) for g in gates) + (sum(gates) if plus_sum else 0)
        assert float(row["train/reg/compute"]) == pytest.approx(term, rel=1e-5)
        assert float(row["train/total_loss"]) == pytest.approx(float(row["train/task_loss"]) + 0.01 * term, rel=1e-5)
    assert float(rows[0]["gates/layer_0"]) != float(rows[-1]["gates/layer_0"])  # the gates trained


def test_short_run_with_one_width_per_layer_trains(run_config):
    _, run_dir = run_config([*GATED, "data.p=11", "model.hidden_dims=[64,32,32,16]",
                             "model.hidden_dim=null", "model.n_layers=null", "regularizer=compute_weighted",
                             "optimizer.lr=1e-2", "trainer.max_steps=100", "trainer.log_every_n_steps=10"])
    with open(run_dir / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    print(f"train/loss over 100 steps: {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.5 * losses[0]


def test_widths_and_one_width_at_once_are_refused_when_the_run_is_configured(run_config):
    with pytest.raises(ConfigError, match=r"^model\.hidden_dims=\[64, 32\] is not allowed: expected null while "
                                          r"model\.hidden_dim or model\.n_layers is set"):
        run_config(["experiment=least_action", "model.hidden_dims=[64,32]"])


def input_gated(**kw):
    torch.manual_seed(0)
    return GatedMLP(in_features=6, num_classes=3, hidden_dim=8, n_layers=4, gate_scope="input", **kw).double()


def test_input_gates_start_at_gate_init_for_every_input_and_are_the_gate_networks_of_each_layers_input():
    model = input_gated(gate_init=0.5)
    x = torch.randn(5, 6, dtype=torch.float64)
    out = model(x)
    assert out.gates.shape == (5, 4)
    torch.testing.assert_close(out.gates, torch.full((5, 4), 0.5, dtype=torch.float64), rtol=0, atol=1e-15)
    with torch.no_grad():
        for gate_net in model.gate_nets:
            gate_net.out.weight.normal_()  # now every input gets its own gate
    out = model(x)
    h, gates = model.embed(x), []
    for gate_net, layer in zip(model.gate_nets, model.layers):  # by hand: one width, no projections
        g = torch.sigmoid(gate_net.out(torch.nn.functional.gelu(gate_net.hidden(h))))  # (5, 1)
        gates.append(g[:, 0])
        h = h + g * torch.nn.functional.gelu(layer(h))
    torch.testing.assert_close(out.gates, torch.stack(gates, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.logits, model.head(h), rtol=1e-12, atol=1e-12)
    assert out.gates.std(0).min() > 1e-3  # inputs differ


def test_an_input_whose_gate_is_closed_skips_the_layer_another_input_uses():
    model = input_gated()
    with torch.no_grad():
        gate = model.gate_nets[2]
        gate.hidden.weight.zero_()
        gate.hidden.bias.zero_()
        gate.hidden.weight[0, 0] = 1.0  # the gate reads coordinate 0 of the layer's input h, through GELU
        gate.out.weight.fill_(1e4)
        gate.out.bias.fill_(-1e4 * 0.5)  # on where GELU(h_0) > 0.5, off where it is below
    x = torch.randn(64, 6, dtype=torch.float64)
    g = model(x).gates[:, 2]
    assert ((g < 1e-6) | (g > 1 - 1e-6)).all() and (g < 1e-6).any() and (g > 1 - 1e-6).any()
    off = g < 1e-6
    before = model(x).logits
    with torch.no_grad():
        model.layers[2].weight.normal_()
    after = model(x).logits
    torch.testing.assert_close(after[off], before[off], rtol=0, atol=1e-9)  # layer 2 skipped for these inputs
    assert (after[~off] - before[~off]).abs().max() > 1e-3


def test_input_gate_networks_take_no_weight_decay_and_gate_types_apply_per_input():
    model = input_gated()
    declared = {f"gate_nets.{i}.{part}.{p}" for i in range(4) for part in ("hidden", "out") for p in ("weight", "bias")}
    assert model.no_weight_decay() == declared
    _, exempt = split_by_decay(model, DecayPolicy(biases=True))
    assert set(exempt) == declared
    straight = input_gated(gate_type="straight_through")
    with torch.no_grad():
        for gate_net in straight.gate_nets:
            gate_net.out.weight.normal_(std=5.0)
    gates = straight(torch.randn(16, 6, dtype=torch.float64)).gates  # 1 + s - s: 1 to float64 rounding
    assert ((gates - gates.round()).abs() < 1e-12).all() and set(gates.round().unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ConfigError, match="gate_scope"):
        net(gate_scope="neuron")


def test_compute_costs_of_input_gates_are_the_mean_over_examples():
    """Per example sum_l g_l (and its entropy) of the example's gates, then the mean over the batch."""
    gates = torch.tensor([[1.0, 0.0, 1.0], [0.5, 0.5, 0.0]])  # depths 2 and 1
    out = NetOutput(logits=torch.zeros(1), gates=gates, layer_flops=torch.tensor([2.0, 2.0, 8.0]))
    assert ComputeCost("sum", 1.0).term(out).item() == pytest.approx(1.5)
    assert ComputeCost("entropy", 1.0).term(out).item() == pytest.approx(math.log(2), abs=1e-4)  # (0 + 2 ln 2) / 2
    # relative weights 0.25, 0.25, 1: example costs 1.25 and 0.25
    assert ComputeCost("weighted", 1.0).term(out).item() == pytest.approx(0.75)
    # the study's raw scale s_in * s_out = FLOPs / 2: 1, 1, 4: example costs 5 and 1
    assert ComputeCost("weighted", 1.0, scale="flops").term(out).item() == pytest.approx(3.0)
    one_gate_each = NetOutput(logits=torch.zeros(1), gates=gates.mean(0), layer_flops=out.layer_flops)
    assert ComputeCost("sum", 1.0).term(one_gate_each).item() == pytest.approx(1.5)  # the sum is linear


def test_the_flops_scale_is_the_seeds_raw_s_in_times_s_out_and_relative_divides_by_the_heaviest():
    """At width 128 the study's compute_cost_weighted weighs a gate by 128 * 128 = 16,384: `flops` gives the
    study's λ its own scale; `relative` is that over the heaviest layer's, so λ_relative = λ_flops * 16,384."""
    model = GatedMLP(in_features=6, num_classes=3, hidden_dims=[128, 64], hidden_dim=None, n_layers=None,
                     gate_init=0.5)
    out = model(torch.randn(3, 6))
    g = out.gates.detach()
    flops = ComputeCost("weighted", 1.0, scale="flops").term(out).item()
    relative = ComputeCost("weighted", 1.0, scale="relative").term(out).item()
    assert flops == pytest.approx(float(g[0] * 128 * 128 + g[1] * 64 * 64), rel=1e-6)
    assert relative == pytest.approx(flops / (128 * 128), rel=1e-6)
    with pytest.raises(ConfigError, match=r"^scale='macs' is not allowed: expected relative"):
        ComputeCost("weighted", 1.0, scale="macs")


def test_the_weighted_preset_offers_both_scales(run_config):
    summary, run_dir = run_config([*GATED, "data.p=11", "model.hidden_dims=[32,16]",
                                   "model.hidden_dim=null", "model.n_layers=null", "regularizer=compute_weighted",
                                   "regularizer.compute.scale=flops", "regularizer.compute.weight=1e-4",
                                   "trainer.max_steps=10"])
    rows = [row for row in metrics_rows(run_dir) if row.get("train/reg/compute")]
    g0, g1 = float(rows[-1]["gates/layer_0"]), float(rows[-1]["gates/layer_1"])
    assert float(rows[-1]["train/reg/compute"]) == pytest.approx(g0 * 32 * 32 + g1 * 16 * 16, rel=1e-5)


def test_a_run_with_input_gates_logs_the_mean_gates_and_their_cost(run_config):
    _, run_dir = run_config([*GATED, "data.p=11", "model.hidden_dim=16", "model.n_layers=3",
                             "model.gate_scope=input", "model.gate_init=0.5", "optimizer.lr=1e-2"])
    rows = [row for row in metrics_rows(run_dir) if row.get("train/reg/compute")]
    for row in rows:  # compute_sum of input gates: the mean over examples of their sum = the sum of the mean gates
        gates = [float(row[f"gates/layer_{i}"]) for i in range(3)]
        assert float(row["train/reg/compute"]) == pytest.approx(sum(gates), rel=1e-5)
        assert float(row["gates/effective_depth"]) == pytest.approx(sum(gates), rel=1e-5)
    assert float(rows[0]["gates/layer_0"]) != float(rows[-1]["gates/layer_0"])  # the gate networks trained

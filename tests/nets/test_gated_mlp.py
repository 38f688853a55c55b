import csv

import pytest
import torch

from lightning_modules import DecayPolicy
from lightning_modules.compute_cost import ComputeCost
from lightning_modules.param_groups import split_by_decay
from nets import GatedMLP
from nets.output import NetOutput
from runtime.errors import ConfigError


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


def test_compute_cost_lowers_effective_depth_from_the_same_init(run_config):
    common = ["experiment=least_action", "data.p=11", "model.hidden_dim=32", "model.n_layers=6",
              "model.gate_init=0.5", "optimizer.lr=1e-2", "trainer.max_steps=200", "trainer.log_every_n_steps=20"]
    _, free = run_config([*common, "regularizer.compute.weight=0.0"], name="free")
    _, pressed = run_config([*common, "regularizer.compute.weight=0.5"], name="pressed")
    free_depth, pressed_depth = final_effective_depth(free), final_effective_depth(pressed)
    print(f"effective depth after 200 steps: lambda=0 {free_depth:.3f}, lambda=0.5 {pressed_depth:.3f}")
    assert pressed_depth < free_depth - 1.0

import torch

from lightning_modules import DecayPolicy
from lightning_modules.param_groups import split_by_decay
from nets import RoutedMLP


def net():
    torch.manual_seed(0)
    return RoutedMLP(in_features=10, num_classes=5, d_model=8, d_hidden=6, state_dim=3, n_layers=2, n_heads=3)


def test_routing_sums_to_one_and_depends_on_the_input():
    out = net()(torch.eye(10)[:4])
    assert out.logits.shape == (4, 5) and len(out.routing) == 2
    for w in out.routing:
        assert w.shape == (4, 3)
        torch.testing.assert_close(w.sum(-1), torch.ones(4))
    assert not torch.allclose(out.routing[0][0], out.routing[0][1])


def test_layer_matches_the_seed_equations():
    model = net()
    layer = model.layers[0]
    x, s = torch.randn(2, 8), torch.randn(2, 3)
    new_x, new_s, w = layer(x, s)
    act = torch.nn.functional.gelu
    expected_w = layer.gate(act(layer.state_proj(s) + layer.residual_proj(x))).softmax(-1)
    h = layer.heads
    heads = torch.stack([act(x @ h.up[i] + h.up_bias[i]) @ h.down[i] + h.down_bias[i] for i in range(3)], dim=1)
    out = (expected_w[..., None] * heads).sum(1)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(new_x, x + out)
    torch.testing.assert_close(new_s, layer.update(torch.cat([s, out], -1)))


def test_routing_parameters_are_exactly_the_declared_no_decay_set():
    model = net()
    _, exempt = split_by_decay(model, DecayPolicy(biases=True))
    parts = ("state_proj", "residual_proj", "gate", "update")
    expected = {f"route_init.{p}" for p in ("weight", "bias")}
    expected |= {f"layers.{i}.{part}.{p}" for i in (0, 1) for part in parts for p in ("weight", "bias")}
    assert set(exempt) == expected


def test_gradient_reaches_the_routing_state():
    model = net()
    model(torch.eye(10)[:4]).logits.sum().backward()
    assert model.route_init.weight.grad.abs().sum() > 0
    assert model.layers[1].state_proj.weight.grad.abs().sum() > 0

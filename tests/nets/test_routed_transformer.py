"""The routed transformer of the routed-transformer study: the transformer with a `RoutedFFN` in every block."""
import torch

from lightning_modules import DecayPolicy
from lightning_modules.param_groups import split_by_decay
from tests.nets.helpers import routed_transformer


def net(**kw):
    torch.manual_seed(0)
    return routed_transformer(vocab_size=10, num_classes=7, seq_len=4, n_layers=2, n_heads=2, d_model=16, **kw)


def test_routing_weights_sum_to_one_per_token_per_layer():
    out = net(n_ffn_heads=3)(torch.randint(0, 10, (5, 4)))
    assert list(out.aux) == ["layer_0/ffn/routing", "layer_1/ffn/routing"]
    assert len(out.routing) == 2 and out.routing[1] is out.aux["layer_1/ffn/routing"]
    for w in out.routing:
        assert w.shape == (5, 4, 3) and torch.all(w >= 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(5, 4))


def test_routed_ffn_is_the_weighted_sum_of_independent_heads():
    ffn = net().blocks[0].ffn
    x = torch.randn(2, 4, 16)
    out, aux = ffn(x)
    w = aux["routing"]
    torch.testing.assert_close(w, ffn.gate(x).softmax(-1))
    heads = ffn.heads
    expected = sum(
        w[..., i : i + 1] * (heads.act(x @ heads.up[i] + heads.up_bias[i]) @ heads.down[i] + heads.down_bias[i])
        for i in range(heads.n_heads)
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_the_gates():
    model = net()
    out = model(torch.randint(0, 10, (3, 4)))
    (out.logits.sum() + sum(w[..., 0].sum() for w in out.routing)).backward()
    for block in model.blocks:
        assert block.ffn.gate.weight.grad is not None and block.ffn.gate.weight.grad.abs().sum() > 0


def test_no_decay_groups_hold_exactly_the_gates_beyond_the_generic_rule():
    model = net()
    gates = {f"blocks.{i}.ffn.gate.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert model.no_weight_decay() == gates
    _, exempt = split_by_decay(model, DecayPolicy(biases=True, norms=True, embeddings=True))
    assert set(exempt) == gates
    _, exempt = split_by_decay(model, DecayPolicy(True, True, True, declared=True))
    assert exempt == []


def test_the_heads_weights_follow_the_init_scheme():
    torch.manual_seed(0)
    model = routed_transformer(vocab_size=10, num_classes=7, seq_len=4, n_layers=1, n_heads=2, d_model=64,
                               init_std=0.05)
    heads = model.blocks[0].ffn.heads
    assert abs(heads.up.std().item() - 0.05) < 0.005
    assert abs(heads.down.std().item() - 0.05) < 0.005 and heads.up_bias.abs().max() == 0

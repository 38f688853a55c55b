"""The routed transformer of the routed-transformer study: the transformer with a `RoutedFFN` in every block."""
import pytest
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


def stateful(**kw):
    return net(gate="stateful", **kw).double()


def test_the_stateful_gate_reads_the_routing_state_the_previous_layer_left():
    """By hand, in float64, through both blocks: layer 0 starts from s = 0, layer 1 reads the state layer 0's
    update wrote from its own output, and the routing weights are the seed's formula."""
    model = stateful()
    tokens = torch.randint(0, 10, (3, 4))
    out = model(tokens)
    assert list(out.aux) == ["layer_0/ffn/routing", "layer_1/ffn/routing"]  # the state is passed on, not kept
    x = model.token_embedding(tokens) + model.position_embedding(torch.arange(4))
    state = torch.zeros(3, 4, 32, dtype=torch.float64)
    for i, block in enumerate(model.blocks):
        x = x + block.attn(block.ln_attn(x))[0]
        h, ffn = block.ln_ffn(x), block.ffn
        weights = torch.softmax(ffn.gate(torch.nn.functional.gelu(ffn.state_proj(state) + ffn.input_proj(h))), -1)
        torch.testing.assert_close(out.aux[f"layer_{i}/ffn/routing"], weights, rtol=1e-12, atol=1e-12)
        mixed = sum(weights[..., j:j + 1] * ffn.heads(h)[..., j, :] for j in range(ffn.heads.n_heads))
        state = ffn.state_update(torch.cat([state, mixed], -1))
        x = x + mixed
    torch.testing.assert_close(out.logits, model.unembed(model.ln_final(x)), rtol=1e-12, atol=1e-12)


def test_the_second_layers_routing_changes_with_the_first_layers_state_update():
    model = stateful()
    tokens = torch.randint(0, 10, (3, 4))
    before = model(tokens).aux
    with torch.no_grad():
        model.blocks[0].ffn.state_update.weight.add_(0.5)  # only what layer 0 hands on changes
    after = model(tokens).aux
    torch.testing.assert_close(after["layer_0/ffn/routing"], before["layer_0/ffn/routing"], rtol=0, atol=0)
    # at init (weights N(0, 0.02^2)) the gate is near uniform and moves by ~1e-5: far above float64 rounding
    assert (after["layer_1/ffn/routing"] - before["layer_1/ffn/routing"]).abs().max() > 1e-9


def test_the_stateful_gate_takes_no_weight_decay_as_the_routed_study_says():
    """The seed's no-decay list: names with `gate`, `state_proj`, `input_proj`; the state's update is a routing
    parameter of the same kind (the least-action study's RoutedMLP exempts it too)."""
    model = stateful()
    parts = ("gate", "state_proj", "input_proj", "state_update")
    declared = {f"blocks.{i}.ffn.{part}.{p}" for i in (0, 1) for part in parts for p in ("weight", "bias")}
    assert model.no_weight_decay() == declared
    _, exempt = split_by_decay(model, DecayPolicy(biases=True, norms=True, embeddings=True))
    assert set(exempt) == declared
    model(torch.randint(0, 10, (3, 4))).routing[1].sum().backward()  # layer 1's routing reaches layer 0's update
    assert model.blocks[0].ffn.state_update.weight.grad.abs().sum() > 0


def test_the_stateful_gate_is_a_config_option_of_the_routed_ffn(tmp_path):
    from hydra.utils import instantiate

    from core.errors import ConfigError
    from runtime.config.build import build_net
    from runtime.config.compose import compose_config

    base = ["experiment=routed_none", "size=cpu", "data.p=7", "model.n_layers=2", "model.d_model=16",
            "model.n_heads=2"]
    cfg = compose_config([*base, "model.ffn.gate=stateful", "model.ffn.state_dim=8"], output_dir=tmp_path)
    built = build_net(cfg.model, instantiate(cfg.data).spec)
    assert all(block.ffn.takes_state and block.ffn.state_proj.in_features == 8 for block in built.blocks)
    assert not build_net(compose_config(base, output_dir=tmp_path).model, instantiate(cfg.data).spec).blocks[0].ffn.takes_state
    bad = compose_config([*base, "model.ffn.gate=sticky"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^model\.ffn\.gate='sticky' is not allowed: expected linear"):
        build_net(bad.model, instantiate(bad.data).spec)

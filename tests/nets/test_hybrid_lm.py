"""The hybrid GDN / softmax LM (nets/models/hybrid_lm.py): layouts, routing aux, causality, routers, temperature, weight
decay names, learning a batch in both routing modes, and the config (conf/model/hybrid_lm.yaml)."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from core.errors import ConfigError
from nets import GLUFFN, GatedDeltaNet, HybridLM, RoutedMixer, SoftmaxAttention, TokenRouter
from runtime.config.build import build_net
from runtime.config.compose import compose_config

ROUTED = ["gdn", "routed", "routed", "attn"]
ROUTED_AUX = [f"layer_{i}/mixer/{name}" for i in (1, 2) for name in ("routing", "expert_index", "router_logits")]


# tiny tensors: a second thread buys nothing, and on a busy 2-core machine its spin-waiting costs 10x
pytestmark = pytest.mark.usefixtures("one_thread")


def hybrid(layers=ROUTED, d_model=16, vocab=12, seq_len=10, seed=0, **kw):
    torch.manual_seed(seed)
    return HybridLM(vocab, vocab, seq_len, layers=layers, d_model=d_model,
                    gdn=partial(GatedDeltaNet, n_heads=2, chunk_size=4), attn=partial(SoftmaxAttention, n_heads=2),
                    ffn=partial(GLUFFN, d_hidden=2 * d_model, activation="silu"), **kw)


def test_the_static_baseline_has_no_routing():
    net = hybrid(["gdn", "gdn", "gdn", "attn"])
    out = net(torch.randint(0, 12, (3, 10)))
    assert out.logits.shape == (3, 10, 12) and out.aux == {} and out.routing == []
    assert not net.routers and net.router is None
    assert [type(block.mixer) for block in net.blocks] == [GatedDeltaNet] * 3 + [SoftmaxAttention]
    assert net.blocks[3].mixer.rotary and net.position_embedding is None


@pytest.mark.parametrize("router", ["shared", "per_layer"])
def test_routed_layers_report_their_routing_under_the_moe_names(router):
    net = hybrid(router=router).eval()
    out = net(torch.randint(0, 12, (3, 10)))
    assert list(out.aux) == ROUTED_AUX
    for i in (1, 2):
        probs, index, logits = (out.aux[f"layer_{i}/mixer/{name}"] for name in ("routing", "expert_index",
                                                                                 "router_logits"))
        assert probs.shape == logits.shape == (3, 10, 2) and index.shape == (3, 10, 1) and index.dtype == torch.int64
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 10))
        torch.testing.assert_close(probs, logits.softmax(-1))
        assert torch.equal(index[..., 0], logits.argmax(-1))  # eval: the argmax
    assert HybridLM.routing_options == ("gdn", "softmax")


def test_the_moe_regularisers_read_the_routed_layers():
    from regularizers.moe import ExpertBalance, RouterZLoss  # the project's, unchanged
    net = hybrid().train()
    out = net(torch.randint(0, 12, (3, 10)))
    for regularizer in (ExpertBalance(weight=1.0), RouterZLoss(weight=1.0)):
        term = regularizer.term(out)
        assert term.ndim == 0 and torch.isfinite(term)
    term = ExpertBalance(weight=1.0).term(out)
    assert 0.9 < term < 1.1  # near-50/50 router probabilities at the start: about 1 (collapsed would be 2)
    term.backward()
    assert net.router.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize("router", ["shared", "per_layer"])
def test_causal(mode, router):
    """Changing token t leaves the logits before t unchanged (routing decisions included) and changes them at t."""
    net = hybrid(router=router, routing_mode=mode).double().eval()
    tokens = torch.randint(0, 12, (3, 10))
    logits = net(tokens).logits
    for t in (0, 4, 9):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1) % 12
        out = net(changed).logits
        torch.testing.assert_close(out[:, :t], logits[:, :t], rtol=0, atol=1e-10)
        assert not torch.allclose(out[:, t], logits[:, t])


@pytest.mark.parametrize("router", ["shared", "per_layer"])
def test_dense_and_sparse_nets_agree_in_eval_where_no_token_overflows(router):
    """Capacity for every token (factor 2), in blocks of 4 of the 10 positions."""
    dense = hybrid(router=router, routing_mode="dense").double().eval()
    sparse = hybrid(router=router, routing_mode="sparse", routing_capacity_factor=2.0, routing_block=4).double().eval()
    sparse.load_state_dict(dense.state_dict())
    tokens = torch.randint(0, 12, (4, 10))
    out = sparse(tokens)
    torch.testing.assert_close(out.logits, dense(tokens).logits, rtol=0, atol=1e-10)
    assert [key for key in out.aux if key.endswith("overflow")] == ["layer_1/mixer/overflow", "layer_2/mixer/overflow"]
    assert all(out.aux[key].item() == 0 for key in ("layer_1/mixer/overflow", "layer_2/mixer/overflow"))
    mixers = [m for m in sparse.modules() if isinstance(m, RoutedMixer)]
    assert [(m.capacity_factor, m.block_size) for m in mixers] == [(2.0, 4)] * 2
    assert not any(getattr(m, "data_dependent_shapes", False) for m in sparse.modules())


@pytest.mark.parametrize("router", ["shared", "per_layer"])
def test_what_the_routers_read(router):
    """shared: layer 0's output (normed), once for both routed layers; per_layer: each routed layer's normed input."""
    net = hybrid(router=router).double().eval()
    seen = {}
    for name, module in net.named_modules():
        if isinstance(module, TokenRouter):
            module.register_forward_hook(lambda m, args, out, name=name: seen.update({name: args[0]}))
    streams = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, args, out: streams.append(out[0]))
    out = net(torch.randint(0, 12, (2, 10)))
    if router == "shared":
        assert list(seen) == ["router"]
        torch.testing.assert_close(seen["router"], net.router_norm(streams[0]))
        logits = net.router(seen["router"]).logits
        for j, i in enumerate((1, 2)):
            torch.testing.assert_close(out.aux[f"layer_{i}/mixer/router_logits"], logits[:, :, j])
    else:
        assert sorted(seen) == ["blocks.1.router", "blocks.2.router"]
        for i in (1, 2):
            torch.testing.assert_close(seen[f"blocks.{i}.router"], net.blocks[i].ln_attn(streams[i - 1]))


def test_one_shared_router_or_one_per_routed_layer():
    d = 16
    shared, per_layer = hybrid(router="shared", d_model=d), hybrid(router="per_layer", d_model=d)
    assert shared.router.proj.weight.shape == (2 * 2, d) and shared.routers == [shared.router]
    assert all(block.router is None for block in shared.blocks[1:3])
    assert per_layer.router is None and len(per_layer.routers) == 2
    assert all(block.router.proj.weight.shape == (2, d) for block in per_layer.blocks[1:3])
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(shared) - count(per_layer) == d  # same router weights in all; the shared router's own norm


@pytest.mark.parametrize("router", ["shared", "per_layer"])
def test_temperature_reaches_every_router(router):
    net = hybrid(router=router, temperature=2.0)
    assert net.temperature == 2.0 and all(r.temperature == 2.0 for r in net.routers)
    net.temperature = 0.5
    assert net.temperature == 0.5 and all(r.temperature == 0.5 for r in net.routers) and len(net.routers) >= 1
    with pytest.raises(ConfigError):
        net.temperature = -1.0


@pytest.mark.parametrize("router", ["shared", "per_layer"])
def test_no_weight_decay_names_every_gdn_and_router(router):
    net = hybrid(router=router)
    declared = net.no_weight_decay()
    assert declared <= dict(net.named_parameters()).keys()
    gdn_names = {f"{name}.{p}" for name, m in net.named_modules() if isinstance(m, GatedDeltaNet)
                 for p in ("A_log", "dt_bias")}
    assert len(gdn_names) == 6 and gdn_names <= declared  # layer 0, and one in each routed layer
    assert {"blocks.1.attn.gdn.A_log", "blocks.0.attn.dt_bias"} <= declared
    routers = {f"{name}.proj.weight" for name, m in net.named_modules() if isinstance(m, TokenRouter)}
    assert declared == gdn_names | routers
    from lightning_modules.param_groups import categories  # every parameter has a role
    assert categories(net)["declared"] == declared


def test_init_is_the_normal_scheme_and_leaves_the_decay_parameters():
    drawn = []

    def gdn(**settings):
        mixer = GatedDeltaNet(n_heads=2, **settings)
        drawn.append((mixer.A_log.detach().clone(), mixer.dt_bias.detach().clone()))
        return mixer

    torch.manual_seed(0)
    net = HybridLM(50, 50, 8, layers=["gdn", "routed"], d_model=64, gdn=gdn, init_std=0.05, positions="learned",
                   router="per_layer")
    mixers = [net.blocks[0].mixer, net.blocks[1].mixer.gdn]
    for mixer, (A_log, dt_bias) in zip(mixers, drawn, strict=True):  # GatedDeltaNet's own init, kept
        assert torch.equal(mixer.A_log, A_log) and torch.equal(mixer.dt_bias, dt_bias)
    for weight in (mixers[0].q_proj.weight, net.blocks[1].mixer.attn.qkv.weight, net.blocks[1].router.proj.weight,
                   net.token_embedding.weight, net.position_embedding.weight, net.unembed.weight):
        assert 0.04 < weight.std() < 0.06
    assert (net.blocks[1].mixer.attn.qkv.bias == 0).all()
    tied = hybrid(tie_weights=True)
    assert tied.unembed.weight is tied.token_embedding.weight


@pytest.mark.rounding
@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_learns_one_batch(mode):
    """A tiny model memorises a fixed batch of next-token targets; the routers get gradient on the way."""
    net = hybrid(routing_mode=mode, d_model=16, seed=1).train()
    torch.manual_seed(0)
    tokens = torch.randint(0, 12, (4, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(net(tokens).logits[:, :-1].reshape(-1, 12), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        assert net.router.proj.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::5]


@pytest.mark.parametrize("settings, key", [
    (dict(layers=["gdn", "mamba"]), "layers"),
    (dict(layers="gdn"), "layers"),
    (dict(layers=[]), "layers"),
    (dict(layers=["routed", "attn"]), "router"),  # the shared router reads layer 0's output
    (dict(positions="alibi"), "positions"),
    (dict(router="global"), "router"),
    (dict(routing_mode="lazy"), "routing_mode"),
    (dict(routing_mode="sparse", routing_capacity_factor=0), "routing_capacity_factor"),
    (dict(routing_mode="sparse", routing_block=0.5), "routing_block"),
    (dict(temperature=0), "temperature"),
    (dict(norm="batch"), "norm"),
])
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError) as info:
        hybrid(**settings)
    assert info.value.key == key and "\n" not in str(info.value)
    hybrid(layers=["routed", "attn"], router="per_layer")  # a routed layer 0 with its own router is fine


def test_rotary_with_an_odd_head_width_is_reported_as_positions():
    with pytest.raises(ConfigError) as info:
        HybridLM(10, 10, 6, layers=["attn"], d_model=12, attn=partial(SoftmaxAttention, n_heads=4))
    assert info.value.key == "positions"
    HybridLM(10, 10, 6, layers=["attn"], d_model=12, attn=partial(SoftmaxAttention, n_heads=4), positions="none")


def configured(tmp_path, *overrides):
    cfg = compose_config(["model=hybrid_lm", "data.format=tokens", *overrides], output_dir=tmp_path)
    torch.manual_seed(0)
    return build_net(cfg.model, instantiate(cfg.data).spec)


def test_the_config_composes_and_builds(tmp_path):
    net = configured(tmp_path, "model.layers=[gdn,routed,routed,attn]", "model.d_model=32", "model.n_heads=2",
                     "model.routing_mode=sparse", "model.router=per_layer")
    assert isinstance(net, HybridLM) and net.layers == tuple(ROUTED)
    routed = net.blocks[1].mixer
    assert routed.mode == "sparse" and routed.gdn.n_heads == 2 and routed.attn.n_heads == 2 and routed.attn.rotary
    assert isinstance(net.blocks[0].ffn, GLUFFN) and isinstance(net.blocks[0].ffn.act, torch.nn.SiLU)
    assert routed.attn.qkv.bias is None  # bias: false reaches the attention through attn_bias
    seq_len = 4  # the default modular task's
    out = net(torch.randint(0, net.token_embedding.num_embeddings, (2, seq_len)))
    assert list(out.aux) == [*ROUTED_AUX[:3], "layer_1/mixer/overflow", *ROUTED_AUX[3:], "layer_2/mixer/overflow"]
    assert (routed.capacity_factor, routed.block_size) == (1.25, 128)  # conf/model/hybrid_lm.yaml's
    static = configured(tmp_path)
    assert static.layers == ("gdn", "gdn", "gdn", "attn") and static.router is None


@pytest.mark.parametrize("overrides, message", [
    (["model.layers=[gdn,foo]"], "model.layers=['gdn', 'foo'] is not allowed: expected a list of gdn | attn | routed"),
    (["model.n_heads=3"], "model.n_heads=3 is not allowed: expected a divisor of model.d_model=128"),
    (["model.routing_mode=lazy"], "model.routing_mode='lazy' is not allowed: expected dense | sparse"),
])
def test_a_bad_setting_is_one_line_under_its_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        configured(tmp_path, *overrides)
    assert str(info.value) == message


def test_switch_balance_on_routed_layers_is_one_when_undecided_and_two_sum_f_squared_when_saturated():
    """E * sum_i f_i P_i with E = 2: uniform router probabilities give exactly 1 whatever the sampled split;
    saturated ones (P = each token's choice) give 2 * (f_gdn^2 + f_softmax^2), 2 when every token goes one way."""
    from regularizers.moe import ExpertBalance

    net = hybrid(router="per_layer").train()
    tokens = torch.randint(0, 12, (8, 10))
    for router in net.routers:
        torch.nn.init.zeros_(router.proj.weight)
    assert ExpertBalance(1.0)(net(tokens)).item() == pytest.approx(1.0, abs=1e-6)
    net.eval()
    for router in net.routers:
        torch.nn.init.normal_(router.proj.weight, std=1e4)  # probabilities one-hot at the argmax choices
    out = net(tokens)
    expected = []
    for i in (1, 2):
        f = F.one_hot(out.aux[f"layer_{i}/mixer/expert_index"][..., 0], 2).float().mean((0, 1))
        expected.append(2 * (f**2).sum())
    assert ExpertBalance(1.0)(out).item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-4)

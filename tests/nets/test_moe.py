"""The mixture-of-experts FFN (nets/parts/moe.py) against a per-token reference, its regularisers
(regularizers/moe.py), and MoE transformers built in code and from the config."""
from fractions import Fraction
from functools import partial
from math import ceil, log

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from core.errors import ConfigError
from lightning_modules.param_groups import DecayPolicy, split_by_decay
from nets import GLUFFN, MLPFFN, MoEFFN, NetOutput, SoftmaxAttention, Transformer
from regularizers.moe import ExpertBalance, RouterZLoss, expert_balance
from regularizers.routing import RoutingRegularizer
from runtime.config.build import build_net
from runtime.config.compose import compose_config


def moe(seed=0, **kw):
    torch.manual_seed(seed)
    settings = dict(d_model=8, n_experts=4, d_hidden=6) | kw
    net = MoEFFN(**settings)
    with torch.no_grad():  # a router with spread-out logits, so that choices are clear and varied
        net.router.weight.normal_(std=1.0)
    return net


def expert_by_hand(part, x):
    """One expert on one token from its weights: down(act(up(x))) or down(act(gate(x)) * up(x))."""
    hidden = F.linear(x, part.up.weight, part.up.bias)
    if isinstance(part, GLUFFN):
        hidden = part.act(F.linear(x, part.gate.weight, part.gate.bias)) * hidden
    else:
        hidden = part.act(hidden)
    return F.linear(hidden, part.down.weight, part.down.bias)


def reference(net, x):
    """Token by token, slot by slot: the chosen experts' weights (renormalised where the net does) times their
    outputs, an assignment
    dropped when its expert already took `capacity` of them (first come in token order). -> (out, dropped)."""
    tokens = x.reshape(-1, x.shape[-1])
    n, k, e = tokens.shape[0], net.top_k, net.n_experts
    capacity = None if net.capacity_factor is None else ceil(Fraction(str(net.capacity_factor)) * n * k / e)
    used, dropped, rows = [0] * e, 0, []
    for token in tokens:
        probs = torch.softmax(token @ net.router.weight.T, dim=-1)
        top = probs.topk(k)
        row = torch.zeros_like(token)
        for slot in range(k):
            i = int(top.indices[slot])
            if capacity is not None and used[i] >= capacity:
                dropped += 1
                continue
            used[i] += 1
            weight = top.values[slot] / top.values.sum() if net.renormalize else top.values[slot]
            row = row + weight * expert_by_hand(net.experts[i], token)
        rows.append(row)
    return torch.stack(rows).reshape(x.shape), dropped / (n * k)


@pytest.mark.parametrize("expert", ["mlp", "glu"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [None, 0.5, 1.0])
def test_grouped_dispatch_equals_the_per_token_reference(expert, top_k, capacity_factor):
    net = moe(expert=expert, top_k=top_k, capacity_factor=capacity_factor).eval()
    x = torch.randn(3, 7, 8)
    out, aux = net(x)
    expected, dropped = reference(net, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert aux["dropped"].shape == () and aux["dropped"].item() == pytest.approx(dropped)
    if capacity_factor is None:
        assert dropped == 0
    if capacity_factor == 0.5:
        assert dropped > 0  # about half the assignments fit: the limit bites
    assert aux["routing"].shape == (3, 7, 4) and aux["router_logits"].shape == (3, 7, 4)
    assert aux["expert_index"].shape == (3, 7, top_k) and aux["expert_index"].dtype == torch.int64
    torch.testing.assert_close(aux["routing"].sum(-1), torch.ones(3, 7))
    torch.testing.assert_close(aux["routing"], aux["router_logits"].softmax(-1))


def test_a_dropped_assignment_leaves_zero_and_capacity_is_first_come_in_token_order():
    net = moe(capacity_factor=1.0, renormalize=True).eval()  # 8 tokens, k 1, 4 experts: 2 each
    with torch.no_grad():
        net.router.weight.zero_()
        net.router.weight[2, 0] = 1.0  # every token with x_0 > 0 prefers expert 2 (others tie at 0)
    x = torch.randn(8, 8)
    x[:, 0] = 1.0
    out, aux = net(x)
    assert (aux["expert_index"] == 2).all() and aux["dropped"].item() == pytest.approx(6 / 8)
    expected = torch.stack([expert_by_hand(net.experts[2], x[t]) for t in range(2)])
    torch.testing.assert_close(out[:2], expected)  # tokens 0 and 1 come first
    assert (out[2:] == 0).all()


def test_each_expert_computes_only_its_own_tokens():
    net = moe(top_k=2).eval()
    seen = {}
    for i, expert in enumerate(net.experts):
        expert.register_forward_hook(lambda module, args, output, i=i: seen.setdefault(i, []).append(args[0].shape[0]))
    x = torch.randn(5, 6, 8)
    _, aux = net(x)
    chosen = aux["expert_index"].reshape(-1, 2)
    assert {i: calls for i, calls in seen.items()} == {i: [int((chosen == i).sum())] for i in range(4)}
    assert sum(calls[0] for calls in seen.values()) == 30 * 2  # tokens x k rows in all, not tokens x experts


@pytest.mark.parametrize("top_k", [1, 2])
def test_renormalised_top_k_weights_sum_to_one(top_k):
    """Run with identity experts: the output is the token times the sum of its chosen weights."""
    net = moe(top_k=top_k, d_hidden=4, renormalize=True).eval()
    for expert in net.experts:
        expert.forward = lambda x: (x, {})
    x = torch.randn(4, 5, 8)
    out, aux = net(x)
    torch.testing.assert_close(out, x)
    top = aux["routing"].topk(top_k, dim=-1)
    assert (top.indices == aux["expert_index"]).all()
    if top_k == 2:
        assert (top.values.sum(-1) < 1).all()  # renormalising changes something


@pytest.mark.rounding
def test_without_renormalising_the_top_1_weight_is_the_router_probability_and_trains_the_router():
    net = moe().eval()  # top_k 1: not renormalised by default (Switch's gate)
    assert not net.renormalize and moe(top_k=2).renormalize
    x = torch.randn(6, 8)
    out, aux = net(x)
    p = aux["routing"].gather(-1, aux["expert_index"])
    expected = torch.stack([p[t] * expert_by_hand(net.experts[int(aux["expert_index"][t])], x[t]) for t in range(6)])
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert net.router.weight.grad.abs().sum() > 0
    renormalised = moe(renormalize=True).eval()
    renormalised(x)[0].square().sum().backward()
    assert renormalised.router.weight.grad.abs().sum() == 0  # k = 1, renormalised: the weight is 1


@pytest.mark.parametrize("expert", ["mlp", "glu"])
def test_an_expert_gets_no_gradient_from_tokens_not_routed_to_it(expert):
    net = moe(expert=expert, top_k=2)
    x = torch.randn(10, 8)
    out, aux = net(x)
    token = 3
    out[token].sum().backward()
    chosen = set(aux["expert_index"][token].tolist())
    for i, part in enumerate(net.experts):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads)  # every expert runs (on no rows, if need be): grads are zeros
        assert any(g.abs().sum() > 0 for g in grads) == (i in chosen), i


def test_jitter_changes_the_routers_input_only_in_training():
    net = moe(jitter=0.5)
    x = torch.randn(2, 9, 8)
    _, aux = net.eval()(x)
    torch.testing.assert_close(aux["router_logits"], x @ net.router.weight.T)
    torch.manual_seed(1)
    out, aux = net.train()(x)
    assert not torch.allclose(aux["router_logits"], x @ net.router.weight.T)
    # the experts see x as it is: the output is theirs on x, weighted by the jittered routing
    weights = aux["routing"].gather(-1, aux["expert_index"])
    # top_k 1 keeps the router probability as the weight (Switch)
    expected = torch.stack([weights[b, t, 0] * expert_by_hand(net.experts[int(aux["expert_index"][b, t, 0])], x[b, t])
                            for b in range(2) for t in range(9)]).reshape(2, 9, 8)
    torch.testing.assert_close(out, expected)
    plain = moe(jitter=0.0).train()
    torch.testing.assert_close(plain(x)[1]["router_logits"], x @ plain.router.weight.T)


def test_jitter_scales_each_input_feature_within_its_range():
    net = moe(jitter=0.2, d_model=8).train()
    with torch.no_grad():
        net.router.weight.zero_()
        net.router.weight[0, 0] = 1.0  # logit 0 reads feature 0
    x = torch.ones(1000, 8)
    ratio = net(x)[1]["router_logits"][:, 0]
    assert 0.8 <= ratio.min() and ratio.max() <= 1.2 and ratio.std() > 0.05


@pytest.mark.parametrize("make, key", [(lambda: MoEFFN(8, n_experts=1), "n_experts"),
                                       (lambda: MoEFFN(8, top_k=3), "top_k"),
                                       (lambda: MoEFFN(8, n_experts=2, top_k=2), None),
                                       (lambda: MoEFFN(8, expert="swiglu"), "expert"),
                                       (lambda: MoEFFN(8, jitter=1.0), "jitter"),
                                       (lambda: MoEFFN(8, jitter=-0.1), "jitter"),
                                       (lambda: MoEFFN(8, capacity_factor=0), "capacity_factor"),
                                       (lambda: MoEFFN(8, match="dense"), "match"),
                                       (lambda: MoEFFN(8, d_hidden=0), "d_hidden"),
                                       (lambda: MoEFFN(8, activation="tanh"), "activation"),
                                       (lambda: MoEFFN(8, renormalize="yes"), "renormalize")])
def test_moe_names_its_own_bad_settings(make, key):
    if key is None:
        make()  # allowed
        return
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key and "\n" not in str(info.value)


def test_the_router_is_declared_and_expert_biases_are_biases():
    net = Transformer(10, 10, 6, n_layers=2, d_model=8, mixer=partial(SoftmaxAttention, n_heads=2),
                      ffn=partial(MoEFFN, n_experts=3, d_hidden=5))
    assert net.no_weight_decay() == {"blocks.0.ffn.router.weight", "blocks.1.ffn.router.weight"}
    decayed, exempt = split_by_decay(net, DecayPolicy())
    assert "blocks.0.ffn.router.weight" in exempt and "blocks.0.ffn.experts.2.up.bias" in exempt
    assert "blocks.0.ffn.experts.2.up.weight" in decayed


# --- regularisers


def output_of(**aux):
    return NetOutput(logits=torch.zeros(1), aux=aux)


@pytest.mark.parametrize("top_k", [1, 2])
def test_balance_is_k_when_balanced_and_e_when_collapsed(top_k):
    n, e = 12, 4
    uniform = torch.full((n, e), 1 / e)
    balanced = torch.stack([torch.arange(n) % e, (torch.arange(n) + 1) % e], -1)[:, :top_k]
    out = output_of(**{"layer_0/ffn/routing": uniform, "layer_0/ffn/expert_index": balanced})
    assert ExpertBalance(weight=0.01)(out).item() == pytest.approx(top_k)
    collapsed = output_of(**{"layer_0/ffn/routing": F.one_hot(torch.zeros(n, dtype=torch.long), e).float(),
                             "layer_0/ffn/expert_index": torch.zeros(n, 1, dtype=torch.long)})
    assert ExpertBalance(weight=0.01)(collapsed).item() == pytest.approx(e)


def test_balance_by_hand_and_its_gradient_goes_through_the_probabilities():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]], requires_grad=True)
    index = torch.tensor([[0], [0]])
    # f = (2/2, 0), P = (0.75, 0.25): 2 * (1 * 0.75 + 0 * 0.25) = 1.5
    value = expert_balance(probs, index)
    assert value.item() == pytest.approx(1.5)
    value.backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # 2 * f_i / n


def test_balance_is_k_for_a_router_with_uniform_probabilities_whatever_it_picks():
    net = moe(top_k=2)
    with torch.no_grad():
        net.router.weight.zero_()
    out = NetOutput(torch.zeros(1), aux={f"layer_0/ffn/{k}": v for k, v in net(torch.randn(4, 5, 8))[1].items()})
    assert ExpertBalance(weight=1.0)(out).item() == pytest.approx(2.0)


def test_balance_counts_on_the_device_and_runs_under_vmap_without_a_loop_over_members():
    # ensembles take the balance term under vmap (the hybrid LM's routed layers); torch.bincount has no batching
    # rule, so torch ran it member by member (with a warning), and it reads its input's maximum on the host
    import warnings

    from nets.parts.moe import assignment_counts

    assert assignment_counts(torch.tensor([[2, 0], [2, 2]]), 4).tolist() == [1, 0, 3, 0]
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(3, 2, 10, 4, generator=gen).softmax(-1)  # 3 members, (2, 10) tokens, 4 experts
    index = torch.randint(0, 4, (3, 2, 10, 2), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "performance drop ... batching rule" warning of a fallback loop
        batched = torch.func.vmap(expert_balance)(probs, index)
    torch.testing.assert_close(batched, torch.stack([expert_balance(p, i) for p, i in zip(probs, index)]))


def test_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [log(3.0), 0.0]])  # logsumexp: log 2, log 4 = 2 log 2
    out = output_of(**{"layer_0/ffn/router_logits": logits, "layer_0/ffn/expert_index": torch.zeros(2, 1).long()})
    assert RouterZLoss(weight=0.001)(out).item() == pytest.approx((1 + 4) / 2 * log(2.0) ** 2)


def two_layer_moe(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(10, 10, 6, n_layers=2, d_model=8, mixer=partial(SoftmaxAttention, n_heads=2),
                       ffn=partial(MoEFFN, n_experts=4, d_hidden=6, **kw))


def test_where_selects_one_layer():
    out = two_layer_moe()(torch.randint(0, 10, (3, 6)))
    aux = out.aux
    layer_1 = expert_balance(aux["layer_1/ffn/routing"], aux["layer_1/ffn/expert_index"])
    layer_0 = expert_balance(aux["layer_0/ffn/routing"], aux["layer_0/ffn/expert_index"])
    assert not torch.allclose(layer_0, layer_1)
    torch.testing.assert_close(ExpertBalance(1.0, where="layer_1/ffn")(out), layer_1)
    torch.testing.assert_close(ExpertBalance(1.0, where="layer_1")(out), layer_1)
    torch.testing.assert_close(ExpertBalance(1.0)(out), (layer_0 + layer_1) / 2)
    z_1 = aux["layer_1/ffn/router_logits"].logsumexp(-1).square().mean()
    torch.testing.assert_close(RouterZLoss(1.0, where="layer_1/ffn")(out), z_1)
    with pytest.raises(ValueError, match=r"where='layer_5' selects no MoE layer; MoE layers sit at: layer_0/ffn, "
                                         r"layer_1/ffn"):
        RouterZLoss(1.0, where="layer_5")(out)
    with pytest.raises(ConfigError):
        ExpertBalance(1.0, where="/")


def test_routing_regularisers_read_the_experts_router_probabilities():
    out = two_layer_moe()(torch.randint(0, 10, (3, 6)))
    value = RoutingRegularizer("entropy", 1.0, where="layer_0/ffn")(out)
    p = out.aux["layer_0/ffn/routing"]
    torch.testing.assert_close(value, -(p * p.log()).sum(-1).mean())


# --- in a transformer, and from the config


@pytest.mark.parametrize("expert", ["mlp", "glu"])
def test_a_moe_transformer_runs_forward_and_backward(expert):
    net = two_layer_moe(expert=expert, top_k=2, capacity_factor=1.25)
    out = net(torch.randint(0, 10, (4, 6)))
    assert out.logits.shape == (4, 6, 10)
    assert {"layer_0/ffn/routing", "layer_0/ffn/expert_index", "layer_0/ffn/router_logits", "layer_0/ffn/dropped",
            "layer_1/ffn/routing"} <= set(out.aux)
    assert len(out.routing) == 2 and out.aux["layer_0/ffn/routing"].shape == (4, 6, 4)
    loss = out.logits.square().mean() + ExpertBalance(0.01)(out) + RouterZLoss(0.001)(out)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.blocks[0].ffn.router.weight.grad.abs().sum() > 0  # k = 2 and the regularisers: the router learns


def test_the_transformer_draws_every_experts_weights_with_its_init():
    torch.manual_seed(0)
    net = Transformer(10, 10, 6, n_layers=1, d_model=128, init_scheme="nanda", norm="none",
                      ffn=partial(MoEFFN, n_experts=2, d_hidden=256))
    for name, p in net.named_parameters():
        if ".ffn." in name:
            expected = 0.0 if name.endswith("bias") else 128**-0.5
            assert p.std().item() == pytest.approx(expected, rel=0.1, abs=1e-9), name


def configured(tmp_path, *overrides):
    cfg = compose_config(["experiment=add7", *overrides], output_dir=tmp_path)
    torch.manual_seed(0)
    return build_net(cfg.model, instantiate(cfg.data).spec)


@pytest.mark.parametrize("group, expert", [("moe", MLPFFN), ("moe_glu", GLUFFN)])
def test_the_moe_configs_build_experts_of_the_models_width(tmp_path, group, expert):
    net = configured(tmp_path, f"model/ffn={group}")
    ffn = net.blocks[0].ffn
    assert isinstance(ffn, MoEFFN) and len(ffn.experts) == 4 and ffn.top_k == 1 and ffn.capacity_factor is None
    assert all(isinstance(e, expert) for e in ffn.experts) and ffn.d_hidden == 256  # add7's d_mlp
    matched = configured(tmp_path, f"model/ffn={group}", "model.ffn.match=dense_total").blocks[0].ffn
    assert matched.d_hidden == {"moe": 63, "moe_glu": 42}[group]


def test_a_bad_moe_setting_is_reported_under_its_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.ffn\.top_k=3 is not allowed: expected 1 or 2, at most "
                                          r"model\.ffn\.n_experts=4$"):
        configured(tmp_path, "model/ffn=moe", "model.ffn.top_k=3")
    with pytest.raises(ConfigError, match=r"^model\.ffn\.match='dense' is not allowed"):
        configured(tmp_path, "model/ffn=moe", "model.ffn.match=dense")


def test_the_moe_regularizer_group_names_both_terms(tmp_path):
    from runtime.config.build import build

    cfg = compose_config(["experiment=add7", "model/ffn=moe", "regularizer=moe"], output_dir=tmp_path)
    regs = build(cfg.regularizer, "regularizer")
    assert set(regs) == {"balance", "z_loss"}
    assert isinstance(regs["balance"], ExpertBalance) and regs["balance"].weight == 0.01
    assert isinstance(regs["z_loss"], RouterZLoss) and regs["z_loss"].weight == 0.001

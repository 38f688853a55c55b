import math

import pytest
import torch

from core.errors import ConfigError
from core.output import NetOutput
from regularizers.routing import RoutingRegularizer, entropy
from tests.conftest import SMALL

N = 4
UNIFORM = torch.full((3, 5, N), 1 / N)
ONE_HOT = torch.nn.functional.one_hot(torch.arange(16).reshape(4, 4) % N, N).float()  # each head 4 times


def routed(*layers, slot="ffn/"):
    """The output of a net with one router per layer (`slot=""`: a routed MLP's keys)."""
    return NetOutput(logits=torch.zeros(1), aux={f"layer_{i}/{slot}routing": w for i, w in enumerate(layers)})


def term(kind, *layers, where=None):
    return RoutingRegularizer(kind, 0.1, where=where).term(routed(*layers)).item()


@pytest.mark.parametrize("kind, uniform", [("entropy", math.log(N)), ("sparsity", math.sqrt(N) - 1),
                                           ("gini", (N - 1) / N)])
def test_decisiveness_terms_on_uniform_and_one_hot_routing(kind, uniform):
    assert term(kind, UNIFORM) == pytest.approx(uniform, abs=1e-6)
    assert term(kind, ONE_HOT) == pytest.approx(0.0, abs=1e-6)
    assert term(kind, UNIFORM, ONE_HOT) == pytest.approx(uniform / 2, abs=1e-6)  # mean over layers


def test_gini_and_entropy_of_a_known_distribution():
    w = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert term("entropy", w) == pytest.approx(math.log(2))
    # Gini by hand: 8 ordered pairs differ by 0.5, so Gini = 4 / (2 * 4 * 1) = 0.5
    assert term("gini", w) == pytest.approx(0.75 - 0.5)
    assert term("sparsity", w) == pytest.approx(1 / math.sqrt(0.5) - 1)


def test_load_balance_is_one_when_balanced_and_n_when_collapsed():
    assert term("load_balance", ONE_HOT) == pytest.approx(1.0)  # every head top choice equally often
    collapsed = torch.zeros(3, 5, N)
    collapsed[..., 2] = 1.0
    assert term("load_balance", collapsed) == pytest.approx(N)


def test_unknown_kind_and_missing_routing_are_errors():
    with pytest.raises(ConfigError):
        RoutingRegularizer("variance", 0.1)
    with pytest.raises(ValueError, match="routing weights"):
        term("entropy")


SKEWED = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]])


@pytest.mark.parametrize("kind", RoutingRegularizer.TERMS)
def test_where_selects_one_layers_router_and_equals_the_term_on_that_layer_alone(kind):
    layers = (UNIFORM, SKEWED, ONE_HOT)
    alone = term(kind, SKEWED)
    assert term(kind, *layers, where="layer_1/ffn") == pytest.approx(alone, abs=1e-7)
    assert term(kind, *layers, where="layer_1") == pytest.approx(alone, abs=1e-7)  # the places inside layer 1
    assert term(kind, *layers, where="layer_[01]/*") == pytest.approx(term(kind, UNIFORM, SKEWED), abs=1e-7)
    assert term(kind, *layers, where="layer_*/ffn") == pytest.approx(term(kind, *layers), abs=1e-7)  # = default
    mlp = RoutingRegularizer(kind, 0.1, where="layer_1").term(routed(*layers, slot="")).item()
    assert mlp == pytest.approx(alone, abs=1e-7)  # a routed MLP's `layer_<i>/routing`


def test_the_default_is_the_mean_over_layers_of_every_router():
    layers = (UNIFORM, SKEWED, ONE_HOT)
    each = [term("entropy", w) for w in layers]
    assert term("entropy", *layers) == pytest.approx(sum(each) / 3, abs=1e-7)
    assert term("entropy", *layers, where=None) == term("entropy", *layers)


def test_where_that_selects_nothing_names_the_routers_there_are():
    with pytest.raises(ValueError, match=r"where='layer_5/ffn' selects no router; routers sit at: layer_0/ffn, "
                                         r"layer_1/ffn$"):
        term("entropy", UNIFORM, SKEWED, where="layer_5/ffn")
    with pytest.raises(ConfigError, match="where"):
        RoutingRegularizer("entropy", 0.1, where="")
    with pytest.raises(ConfigError, match="where"):
        RoutingRegularizer("entropy", 0.1, where=1)


def test_where_on_a_configured_routed_transformer(tmp_path):
    from hydra.utils import instantiate

    from runtime.config.build import build, build_net
    from runtime.config.compose import compose_config

    cfg = compose_config(["experiment=routed_none", "size=cpu", "data.p=7", "model.n_layers=2", "model.d_model=16",
                          "model.n_heads=2", "regularizer=entropy", "+regularizer.entropy.where=layer_1/ffn"],
                         output_dir=tmp_path)
    data = instantiate(cfg.data)
    torch.manual_seed(0)
    out = build_net(cfg.model, data.spec)(data.splits["train"].inputs)
    regularizer = build(cfg.regularizer, "regularizer")["entropy"]
    assert regularizer.where == "layer_1/ffn"
    torch.testing.assert_close(regularizer.term(out), entropy(out.aux["layer_1/ffn/routing"]).mean())


def routing_term_after(run_config, name, regularizer, kind="entropy", n_layers=1):
    """The routing term `kind` of a small routed transformer's routing on the training split after 150 steps."""
    from hydra.utils import instantiate

    from runtime.config.build import build_net
    from runtime.config.compose import compose_config

    overrides = ["experiment=routed_none", "data.p=11", "data.train_fraction=0.5", f"model.n_layers={n_layers}",
                 "model.d_model=32", "optimizer.lr=3e-3", "optimizer.warmup_steps=10", "trainer.max_steps=150",
                 "trainer.val_check_interval=50", *regularizer]
    _, run_dir = run_config(overrides, name=name)
    cfg = compose_config([*SMALL, *overrides, "trainer.max_steps=150"], output_dir=run_dir)
    data = instantiate(cfg.data)
    net = build_net(cfg.model, data.spec)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    with torch.no_grad():
        return term(kind, *net(data.splits["train"].inputs).routing)


def routing_entropy_after(run_config, name, regularizer):
    return routing_term_after(run_config, name, regularizer)


@pytest.mark.rounding
def test_entropy_regularisation_lowers_routing_entropy_from_the_same_init(run_config):
    plain = routing_entropy_after(run_config, "none", [])
    regularised = routing_entropy_after(run_config, "entropy", ["regularizer=entropy", "regularizer.entropy.weight=1.0"])
    print(f"routing entropy after 150 steps: none {plain:.4f}, entropy λ=1 {regularised:.4f}")
    assert regularised < 0.5 * plain, (plain, regularised)


def test_consistency_on_known_routings():
    """Total variation between adjacent layers' routing of each token, averaged over tokens and layer pairs."""
    other = torch.roll(ONE_HOT, 1, dims=-1)  # every token one-hot on the next head: TV 1 from ONE_HOT
    assert term("consistency", ONE_HOT, ONE_HOT) == pytest.approx(0.0, abs=1e-7)
    assert term("consistency", UNIFORM, UNIFORM) == pytest.approx(0.0, abs=1e-7)  # agreement, not decisiveness
    assert term("consistency", ONE_HOT, other) == pytest.approx(1.0, abs=1e-7)
    assert term("consistency", ONE_HOT, torch.full_like(ONE_HOT, 1 / N)) == pytest.approx((N - 1) / N, abs=1e-7)
    # three layers: pairs (0, 1) agree, (1, 2) differ in every token: the mean over the two pairs is 1/2
    assert term("consistency", ONE_HOT, ONE_HOT, other) == pytest.approx(0.5, abs=1e-7)
    # by hand, one token: 1/2 (|0.7 - 0.4| + |0.1 - 0.4| + 0 + 0) = 0.3, and the second token agrees
    first, second = SKEWED.clone(), SKEWED.clone()
    second[0] = torch.tensor([0.4, 0.4, 0.1, 0.1])
    assert term("consistency", first, second) == pytest.approx(0.15, abs=1e-7)
    assert term("consistency", ONE_HOT, ONE_HOT, other, where="layer_[01]/ffn") == pytest.approx(0.0, abs=1e-7)


def test_consistency_needs_two_routers_of_one_shape():
    with pytest.raises(ValueError, match=r"needs two or more of one shape, and selects layer_0/ffn \(shapes"):
        term("consistency", ONE_HOT)
    with pytest.raises(ValueError, match="needs two or more of one shape"):
        term("consistency", ONE_HOT, UNIFORM)  # (4, 4, 4) and (3, 5, 4)
    with pytest.raises(ConfigError, match="consistency"):  # the kinds it lists
        RoutingRegularizer("consistent", 0.1)


def consistency_after(run_config, name, regularizer):
    """The consistency term of a 2-layer routed transformer's routing on the training split after 150 steps."""
    return routing_term_after(run_config, name, regularizer, kind="consistency", n_layers=2)


@pytest.mark.rounding
def test_consistency_regularisation_makes_layers_route_alike_from_the_same_init(run_config):
    """Entropy alone makes routing decisive layer by layer, each layer choosing its own heads; adding consistency
    (λ = 1) makes the two layers choose alike. Margin: the term must fall to below half of its value without it."""
    decisive = ["regularizer=[entropy,consistency]", "regularizer.entropy.weight=1.0"]
    apart = consistency_after(run_config, "apart", [*decisive, "regularizer.consistency.weight=0.0"])
    alike = consistency_after(run_config, "alike", [*decisive, "regularizer.consistency.weight=1.0"])
    print(f"consistency after 150 steps: λ=0 {apart:.4f}, λ=1 {alike:.4f}")
    assert alike < 0.5 * apart, (apart, alike)

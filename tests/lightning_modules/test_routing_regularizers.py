import math

import pytest
import torch

from lightning_modules.routing_regularizers import RoutingRegularizer
from nets.output import NetOutput
from runtime.errors import ConfigError
from tests.conftest import SMALL

N = 4
UNIFORM = torch.full((3, 5, N), 1 / N)
ONE_HOT = torch.nn.functional.one_hot(torch.arange(16).reshape(4, 4) % N, N).float()  # each head 4 times


def term(kind, *layers):
    return RoutingRegularizer(kind, 0.1).term(NetOutput(logits=torch.zeros(1), routing=list(layers))).item()


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


def routing_entropy_after(run_config, name, regularizer):
    from hydra.utils import instantiate

    from runtime.build import build_net
    from runtime.compose import compose_config

    overrides = ["experiment=routed_none", "data.p=11", "data.train_fraction=0.5", "model.n_layers=1",
                 "model.d_model=32", "optimizer.lr=3e-3", "optimizer.warmup_steps=10", "trainer.max_steps=150",
                 "trainer.val_check_interval=50", *regularizer]
    _, run_dir = run_config(overrides, name=name)
    cfg = compose_config([*SMALL, *overrides, "trainer.max_steps=150"], output_dir=run_dir)
    data = instantiate(cfg.data)
    net = build_net(cfg.model, data.spec)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    with torch.no_grad():
        return term("entropy", *net(data.splits["train"].inputs).routing)


def test_entropy_regularisation_lowers_routing_entropy_from_the_same_init(run_config):
    plain = routing_entropy_after(run_config, "none", [])
    regularised = routing_entropy_after(run_config, "entropy", ["regularizer=entropy", "regularizer.entropy.weight=1.0"])
    print(f"routing entropy after 150 steps: none {plain:.4f}, entropy λ=1 {regularised:.4f}")
    assert regularised < 0.5 * plain, (plain, regularised)

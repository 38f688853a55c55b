import pytest
import torch
from torch import nn

from core.errors import ConfigError
from lightning_modules import AdamWRecipe, DecayPolicy
from lightning_modules.param_groups import categories, split_by_decay
from nets import MLP, GatedMLP, RoutedMLP
from runtime.config.build import build
from runtime.config.compose import compose_config
from tests.nets.helpers import routed_transformer, transformer


class Declares(nn.Module):
    """A net that declares its gate as no-decay, like the routed nets will."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.gate = nn.Linear(4, 2, bias=False)

    def no_weight_decay(self):
        return {"gate.weight"}


def test_mlp_decays_weights_not_biases():
    decayed, exempt = split_by_decay(MLP(6, 3, hidden_dim=5), DecayPolicy())
    assert decayed == ["hidden.0.weight", "hidden.2.weight", "head.weight"]
    assert exempt == ["hidden.0.bias", "hidden.2.bias", "head.bias"]


def test_transformer_exempts_exactly_embeddings_norms_and_biases():
    net = transformer(vocab_size=7, num_classes=5, seq_len=4, n_layers=1, n_heads=1, d_model=8)
    decayed, exempt = split_by_decay(net, DecayPolicy())
    assert set(exempt) == {
        "token_embedding.weight", "position_embedding.weight",
        "blocks.0.ln_attn.weight", "blocks.0.ln_attn.bias", "blocks.0.ln_ffn.weight", "blocks.0.ln_ffn.bias",
        "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.bias", "blocks.0.ffn.up.bias", "blocks.0.ffn.down.bias",
        "ln_final.weight", "ln_final.bias",
    }
    assert set(decayed) == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.ffn.up.weight",
                            "blocks.0.ffn.down.weight", "unembed.weight"}


def test_declared_names_are_exempt_unless_policy_decays_them():
    assert split_by_decay(Declares(), DecayPolicy())[1] == ["body.bias", "gate.weight"]
    assert split_by_decay(Declares(), DecayPolicy(declared=True))[1] == ["body.bias"]


def test_decay_everything_like_openai_grok():
    net = transformer(vocab_size=7, num_classes=7, seq_len=4, n_layers=1, n_heads=1, d_model=8, tie_weights=True)
    decayed, exempt = split_by_decay(net, DecayPolicy(True, True, True, True))
    assert exempt == [] and len(decayed) == len(list(net.parameters()))


def test_tied_weight_is_listed_once_as_an_embedding():
    net = transformer(vocab_size=7, num_classes=7, seq_len=4, n_layers=1, n_heads=1, d_model=8, tie_weights=True)
    decayed, exempt = split_by_decay(net, DecayPolicy())
    assert "token_embedding.weight" in exempt and "unembed.weight" not in decayed + exempt


def test_optimizer_groups_carry_their_weight_decay():
    optimizer, _ = AdamWRecipe(weight_decay=0.7).build(Declares())
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 0.7 and groups["no_decay"]["weight_decay"] == 0.0
    assert len(groups["decay"]["params"]) == 1 and len(groups["no_decay"]["params"]) == 2
    assert optimizer.defaults["betas"] == (0.9, 0.98)


def test_linear_warmup_reaches_lr_at_warmup_steps():
    net = nn.Linear(2, 2)
    optimizer, scheduler = AdamWRecipe(lr=1e-2, warmup_steps=4).build(net)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


@pytest.mark.parametrize("schedule, at_5", [("cosine", 0.1 + 0.9 * 0.5 * (1 + 0.5**0.5)), ("linear", 0.1 + 0.9 * 0.75)])
def test_warmup_then_decay_to_the_final_fraction(schedule, at_5):
    optimizer, scheduler = AdamWRecipe(lr=2.0, warmup_steps=4, schedule=schedule, decay_steps=12,
                                       final_lr_fraction=0.1).build(nn.Linear(2, 2))
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        scheduler.step()
    # warmup to the full lr at step 3, halfway down at step 7, the floor from step 11 on
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[5] == pytest.approx(at_5) and lrs[7] == pytest.approx(0.55)
    assert lrs[11:] == pytest.approx([0.1] * 3)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_unknown_declared_name_is_an_error():
    class Bad(Declares):
        def no_weight_decay(self):
            return {"gate.wieght"}

    with pytest.raises(ValueError, match="gate.wieght"):
        split_by_decay(Bad(), DecayPolicy())


@pytest.mark.parametrize("kw, key", [(dict(lr=0), "lr"), (dict(betas=[0.9, 1.0]), "betas"),
                                     (dict(weight_decay=-1), "weight_decay"), (dict(warmup_steps=-2), "warmup_steps"),
                                     (dict(decay={"gates": True}), "decay"), (dict(schedule="step"), "schedule"),
                                     (dict(schedule="cosine", warmup_steps=10, decay_steps=10), "decay_steps"),
                                     (dict(final_lr_fraction=2), "final_lr_fraction")])
def test_bad_optimizer_settings(kw, key):
    with pytest.raises(ConfigError) as info:
        AdamWRecipe(**kw)
    assert info.value.key == key


def test_declared_parameters_can_get_their_own_learning_rate():
    optimizer, scheduler = AdamWRecipe(lr=1e-3, declared_lr=1e-2, warmup_steps=2).build(Declares())
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"decay", "no_decay", "declared_no_decay"}
    assert len(groups["declared_no_decay"]["params"]) == 1 and groups["declared_no_decay"]["weight_decay"] == 0.0
    optimizer.step()
    scheduler.step()  # warmup scales every group's own lr
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert groups["declared_no_decay"]["lr"] == pytest.approx(1e-2)


def transformer_roles(ffn_params: dict[str, str]) -> dict[str, str]:
    """Roles of a 2-block Transformer's parameters, its blocks' FFN given by `ffn_params` {name: role}."""
    roles = {"token_embedding.weight": "embedding", "position_embedding.weight": "embedding",
             "ln_final.weight": "norm", "ln_final.bias": "norm", "unembed.weight": "weight"}
    for i in range(2):
        block = {"ln_attn.weight": "norm", "ln_attn.bias": "norm", "ln_ffn.weight": "norm", "ln_ffn.bias": "norm",
                 "attn.qkv.weight": "weight", "attn.qkv.bias": "bias", "attn.proj.weight": "weight",
                 "attn.proj.bias": "bias", **ffn_params}
        roles |= {f"blocks.{i}.{name}": role for name, role in block.items()}
    return roles


LINEAR = {"weight": "weight", "bias": "bias"}
HEADS = {"heads.up": "weight", "heads.down": "weight", "heads.up_bias": "bias", "heads.down_bias": "bias"}


def linears(*names: str) -> dict[str, str]:
    return {f"{name}.{p}": role for name in names for p, role in LINEAR.items()}


# Every net of nets/, small, with the role of each of its parameters written out by hand: a bias is a 1-D
# (per head: 1-D per head) additive offset after a linear map; norms are LayerNorm scales and shifts.
NETS = {
    "mlp": (lambda: MLP(6, 3, hidden_dim=5, n_hidden=2), linears("hidden.0", "hidden.2", "head")),
    "transformer": (lambda: transformer(7, 5, 4, n_layers=2, n_heads=1, d_model=8),
                    transformer_roles(linears("ffn.up", "ffn.down"))),
    "routed_transformer": (lambda: routed_transformer(7, 5, 4, n_ffn_heads=2, n_layers=2, n_heads=1, d_model=8),
                           transformer_roles({f"ffn.{k}": v for k, v in (HEADS | linears("gate")).items()})),
    "routed_mlp": (lambda: RoutedMLP(6, 3, d_model=8, d_hidden=8, state_dim=4, n_layers=2, n_heads=2),
                   linears("embed", "route_init", "head")
                   | {f"layers.{i}.{k}": v for i in range(2)
                      for k, v in (HEADS | linears("state_proj", "residual_proj", "gate", "update")).items()}),
    "gated_mlp": (lambda: GatedMLP(6, 3, hidden_dims=[8, 4, 4]),
                  linears("embed", "layers.0", "layers.1", "layers.2", "head")
                  | {"projections.1.weight": "weight", "gate_logits": "weight"}),
}


@pytest.mark.parametrize("name", NETS)
def test_every_parameter_of_every_net_is_in_the_category_of_its_role(name):
    make, roles = NETS[name]
    net = make()
    assert set(roles) == {n for n, _ in net.named_parameters()}  # the listing above is complete
    found = categories(net)
    for role, category in (("bias", "biases"), ("norm", "norms"), ("embedding", "embeddings")):
        assert found[category] == {n for n, r in roles.items() if r == role}, category


def heads_biases(net: nn.Module) -> set[int]:
    return {id(p) for n, p in net.named_parameters() if n.endswith(("heads.up_bias", "heads.down_bias"))}


@pytest.mark.parametrize("name", ["routed_transformer", "routed_mlp"])
def test_decay_biases_reaches_the_parallel_heads_biases(tmp_path, name):
    net = NETS[name][0]()
    for value, group in (("false", "no_decay"), ("true", "decay")):
        cfg = compose_config([f"model={name}", f"optimizer.decay.biases={value}"], output_dir=tmp_path / value)
        optimizer, _ = build(cfg.optimizer, "optimizer").build(net)
        groups = {g["name"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
        assert heads_biases(net) <= groups[group], value
        assert not heads_biases(net) & groups[{"decay": "no_decay", "no_decay": "decay"}[group]]


class Raw(nn.Module):
    """A project module with raw parameters: an offset named `shift`, and a matrix."""

    def __init__(self):
        super().__init__()
        self.matrix = nn.Parameter(torch.ones(2, 2))
        self.shift = nn.Parameter(torch.zeros(2))


def test_a_project_module_must_state_the_roles_of_its_raw_parameters():
    with pytest.raises(ValueError, match=r"Raw\.matrix has no role.*parameter_roles"):
        categories(Raw())

    class Stated(Raw):
        parameter_roles = {"matrix": "weight", "shift": "bias"}

    assert categories(Stated())["biases"] == {"shift"}

    class Misstated(Raw):
        parameter_roles = {"matrix": "weight", "shift": "offset"}

    with pytest.raises(ValueError, match="'offset'"):
        categories(Misstated())

import pytest
from torch import nn

from lightning_modules import AdamWRecipe, DecayPolicy
from lightning_modules.param_groups import split_by_decay
from nets import MLP, Transformer
from runtime.errors import ConfigError


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
    net = Transformer(vocab_size=7, num_classes=5, seq_len=4, n_layers=1, n_heads=1, d_model=8)
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
    net = Transformer(vocab_size=7, num_classes=7, seq_len=4, n_layers=1, n_heads=1, d_model=8, tie_weights=True)
    decayed, exempt = split_by_decay(net, DecayPolicy(True, True, True, True))
    assert exempt == [] and len(decayed) == len(list(net.parameters()))


def test_tied_weight_is_listed_once_as_an_embedding():
    net = Transformer(vocab_size=7, num_classes=7, seq_len=4, n_layers=1, n_heads=1, d_model=8, tie_weights=True)
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


def test_unknown_declared_name_is_an_error():
    class Bad(Declares):
        def no_weight_decay(self):
            return {"gate.wieght"}

    with pytest.raises(ValueError, match="gate.wieght"):
        split_by_decay(Bad(), DecayPolicy())


@pytest.mark.parametrize("kw, key", [(dict(lr=0), "lr"), (dict(betas=[0.9, 1.0]), "betas"),
                                     (dict(weight_decay=-1), "weight_decay"), (dict(warmup_steps=-2), "warmup_steps"),
                                     (dict(decay={"gates": True}), "decay")])
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

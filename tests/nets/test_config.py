"""The transformer as configured (conf/model/): parts chosen by config group, the settings researchers set on the
command line, and bad values reported in one line under the key that was set (runtime/config/build.py)."""

import pytest
import torch

from core.errors import ConfigError
from nets import GLUFFN, MLPFFN, RoutedFFN, SoftmaxAttention, Transformer
from runtime.config.build import build_net
from runtime.config.compose import compose_config
from tests.helpers import task_spec
from tests.nets.helpers import routed_transformer
from tests.test_sizes import EXPERIMENTS


def configured(tmp_path, *overrides, seed=0):
    cfg = compose_config(list(overrides), output_dir=tmp_path)
    spec = task_spec(cfg.data, tmp_path)
    torch.manual_seed(seed)
    return cfg, build_net(cfg.model, spec)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds(tmp_path, name):
    cfg, net = configured(tmp_path, f"experiment={name}")
    if cfg.model._target_ == "nets.Transformer":
        assert isinstance(net, Transformer) and isinstance(net.blocks[0].mixer, SoftmaxAttention)


def test_command_line_settings_reach_the_parts(tmp_path):
    _, net = configured(tmp_path, "experiment=transformer_grok", "size=cpu", "model.n_heads=2", "model.d_mlp=96",
                        "model.activation=relu", "model.bias=false")
    block = net.blocks[0]
    assert block.mixer.n_heads == 2 and block.mixer.qkv.bias is None  # attn_bias follows bias
    assert isinstance(block.ffn, MLPFFN) and block.ffn.up.out_features == 96 and block.ffn.up.bias is None
    assert isinstance(block.ffn.act, torch.nn.ReLU)
    _, net = configured(tmp_path, "experiment=nanda_grok", "size=cpu")
    assert net.blocks[0].mixer.qkv.bias is None and net.blocks[0].ffn.up.bias is not None


def test_the_ffn_is_a_config_group(tmp_path):
    _, net = configured(tmp_path, "experiment=transformer_grok", "size=cpu", "model/ffn=glu", "model.activation=silu")
    assert isinstance(net.blocks[0].ffn, GLUFFN) and isinstance(net.blocks[0].ffn.act, torch.nn.SiLU)
    _, net = configured(tmp_path, "experiment=transformer_grok", "size=cpu", "model/ffn=glu", "model.ffn.d_hidden=40")
    assert net.blocks[0].ffn.up.out_features == 40
    _, net = configured(tmp_path, "model=transformer", "data.format=tokens", "model/ffn=routed", "model.ffn.n_heads=3")
    assert isinstance(net.blocks[0].ffn, RoutedFFN) and net.blocks[0].ffn.heads.n_heads == 3


def test_the_routed_transformer_is_the_transformer_with_routed_ffns(tmp_path):
    cfg, net = configured(tmp_path, "experiment=routed_none", "size=cpu", "data.p=7", "model.d_model=16", "model.n_heads=2",
                          "model.n_ffn_heads=3")
    assert type(net) is Transformer and all(isinstance(block.ffn, RoutedFFN) for block in net.blocks)
    torch.manual_seed(0)
    same = routed_transformer(net.token_embedding.num_embeddings, net.unembed.out_features,
                              net.position_embedding.num_embeddings, n_layers=cfg.model.n_layers, n_heads=2,
                              d_model=16, n_ffn_heads=3)
    for (name, a), (_, b) in zip(net.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), name
    out = net(torch.randint(0, 7, (5, net.position_embedding.num_embeddings)))
    assert list(out.aux) == [f"layer_{i}/ffn/routing" for i in range(cfg.model.n_layers)]
    for w in out.routing:
        assert w.shape[-1] == 3 and torch.all(w >= 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    assert net.no_weight_decay() == {f"blocks.{i}.ffn.gate.{p}" for i in range(cfg.model.n_layers)
                                     for p in ("weight", "bias")}


@pytest.mark.parametrize("overrides, message", [
    (["model=transformer", "data.format=tokens", "model.n_heads=3"],
     "model.n_heads=3 is not allowed: expected a divisor of model.d_model=128"),
    (["experiment=transformer_grok", "size=cpu", "model.mixer.n_heads=5"],
     "model.mixer.n_heads=5 is not allowed: expected a divisor of model.d_model=128"),
    (["experiment=transformer_grok", "size=cpu", "model.d_mlp=-5"],
     "model.d_mlp=-5 is not allowed: expected a positive integer, or null for 4 * model.d_model"),
    (["experiment=transformer_grok", "size=cpu", "model.activation=tanh"],
     "model.activation='tanh' is not allowed: expected gelu, relu, silu"),
    (["experiment=transformer_grok", "size=cpu", "model.attn_bias=null"],
     "model.attn_bias=None is not allowed: expected true or false"),
    (["experiment=routed_none", "size=cpu", "model.n_ffn_heads=1"], "model.n_ffn_heads=1 is not allowed: expected an integer >= 2"),
    (["experiment=transformer_grok", "size=cpu", "model/ffn=glu", "model.ffn.d_hidden=0"],
     "model.ffn.d_hidden=0 is not allowed: expected a positive integer, or null for 4 * model.d_model"),
    (["experiment=transformer_grok", "size=cpu", "model.norm=batch"], "model.norm='batch' is not allowed: expected "
                                                              "layernorm, rmsnorm, none"),
])
def test_a_bad_setting_is_one_line_under_the_key_that_was_set(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        configured(tmp_path, *overrides)
    assert str(info.value) == message


def test_a_setting_neither_the_net_nor_a_part_takes_is_still_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^model='nets.Transformer' is not allowed: .*'foo'"):
        configured(tmp_path, "experiment=transformer_grok", "size=cpu", "+model.foo=1")


def test_a_config_error_is_an_invalid_setting_and_stays_one_when_qualified():
    from core.errors import ConfigError

    err = ConfigError("p", 4, "a prime", related=["q"])
    assert isinstance(err, ConfigError) and isinstance(err.under("data"), ConfigError)
    assert str(ConfigError("n", 0, "more than q=1", ["q"]).under("model")) == (
        "model.n=0 is not allowed: expected more than model.q=1")
    kept = ConfigError("n_heads", 3, "a divisor of d_model=8", ["d_model"]).under("mixer", keep=["d_model"])
    assert (kept.key, kept.related, kept.allowed) == ("mixer.n_heads", ("d_model",), "a divisor of d_model=8")

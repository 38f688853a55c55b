import pytest
import torch

from nets import MLP, Transformer
from runtime.errors import ConfigError


def small(**kw):
    torch.manual_seed(0)
    return Transformer(vocab_size=10, num_classes=10, seq_len=6, n_layers=2, n_heads=2, d_model=16, **kw)


def test_output_shapes():
    net = small()
    out = net(torch.randint(0, 10, (3, 6)))
    assert out.logits.shape == (3, 6, 10) and out.attention == []
    mlp = MLP(in_features=8, num_classes=5, hidden_dim=7)
    assert mlp(torch.randn(4, 8)).logits.shape == (4, 5)


def test_causal_future_tokens_do_not_change_earlier_logits():
    net = small()
    x = torch.randint(0, 10, (2, 6))
    y = x.clone()
    y[:, 4:] = (y[:, 4:] + 1) % 10
    a, b = net(x).logits, net(y).logits
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_explicit_attention_matches_fused_kernel_and_is_causal():
    net = small()
    x = torch.randint(0, 10, (2, 6))
    fused, explicit = net(x), net(x, return_attention=True)
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=1e-5)
    assert len(explicit.attention) == 2
    attn = explicit.attention[0]
    assert attn.shape == (2, 2, 6, 6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 6))
    assert torch.all(attn.triu(diagonal=1) == 0)


def test_weight_tying_shares_one_tensor():
    net = small(tie_weights=True)
    assert net.unembed.weight is net.token_embedding.weight
    with pytest.raises(ConfigError):
        Transformer(vocab_size=10, num_classes=7, seq_len=4, tie_weights=True)


def test_nanda_style_model_has_no_norms():
    net = small(norm="none", activation="relu")
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in net.modules())


def test_attention_biases_can_be_left_out_alone():
    names = {name for name, _ in small(attn_bias=False).named_parameters() if name.endswith("bias")}
    assert names == {f"blocks.{i}.{part}.bias" for i in range(2) for part in ("ffn.up", "ffn.down", "ln_attn",
                                                                               "ln_ffn")} | {"ln_final.bias"}
    assert {name for name, _ in small().named_parameters()} >= {"blocks.0.attn.qkv.bias", "blocks.0.attn.proj.bias"}
    assert not any(name.endswith("bias") and "ln" not in name
                   for name, _ in small(bias=False, attn_bias=True).named_parameters() if ".ffn." in name)


def test_nanda_init_scales_each_matrix_like_their_code():
    """N(0, 1/d_model) for embeddings, attention and MLP weights; N(0, 1/classes) for the unembedding; zero biases."""
    torch.manual_seed(0)
    net = Transformer(vocab_size=114, num_classes=113, seq_len=3, n_layers=1, d_model=128, norm="none",
                      init_scheme="nanda", init_std=0.5)  # init_std is ignored under this scheme
    stds = {name: p.std().item() for name, p in net.named_parameters() if not name.endswith("bias")}
    for name, std in stds.items():
        expected = 113**-0.5 if name == "unembed.weight" else 128**-0.5
        assert std == pytest.approx(expected, rel=0.1), name
    assert all(p.abs().max() == 0 for name, p in net.named_parameters() if name.endswith("bias"))
    assert net.init_std == 128**-0.5  # what subclasses draw their own weights with


@pytest.mark.parametrize("kw, key", [(dict(d_model=30, n_heads=4), "n_heads"), (dict(d_model=0), "d_model"),
                                     (dict(norm="batch"), "norm"), (dict(activation="tanh"), "activation"),
                                     (dict(n_layers=0), "n_layers"), (dict(init_scheme="xavier"), "init_scheme"),
                                     (dict(attn_bias="no"), "attn_bias")])
def test_bad_settings(kw, key):
    with pytest.raises(ConfigError) as info:
        Transformer(vocab_size=10, num_classes=10, seq_len=4, **kw)
    assert info.value.key == key


def test_heads_that_do_not_divide_the_width_name_both_settings_under_their_group():
    with pytest.raises(ConfigError) as info:
        Transformer(vocab_size=10, num_classes=10, seq_len=4, n_heads=3, d_model=128)
    assert str(info.value) == "n_heads=3 is not allowed: expected a divisor of d_model=128"
    assert str(info.value.under("model")) == "model.n_heads=3 is not allowed: expected a divisor of model.d_model=128"

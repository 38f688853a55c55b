"""The Gated DeltaNet mixer (nets/parts/gated_deltanet.py): shapes, chunk = recurrent, causality, the short convolution, the
initialisation, weight-decay names, gradients, bad settings."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from nets import MLPFFN, GatedDeltaNet, Transformer
from nets.kernels import fla_choice
from nets.parts.short_conv import ShortConvolution


def test_shapes_and_widths():
    torch.manual_seed(0)
    mixer = GatedDeltaNet(d_model=16, n_heads=2)
    y, aux = mixer(torch.randn(3, 7, 16))
    assert y.shape == (3, 7, 16) and aux == {}
    assert (mixer.q_proj.out_features, mixer.v_proj.out_features, mixer.a_proj.out_features) == (16, 16, 2)
    wide = GatedDeltaNet(d_model=16, n_heads=2, head_dim=4, expand_v=2.0, use_gate=False)
    assert (wide.k_proj.out_features, wide.v_proj.out_features, wide.o_proj.in_features) == (8, 16, 16)
    assert wide.g_proj is None and wide.o_norm.weight.shape == (8,)
    y, _ = wide(torch.randn(2, 5, 16), return_attention=True)  # accepted, ignored: no attention matrix
    assert y.shape == (2, 5, 16)
    assert all(p.bias is None for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.a_proj, mixer.b_proj,
                                         mixer.g_proj, mixer.o_proj))


@pytest.mark.parametrize("chunk_size, length", [(4, 11), (64, 5)])
def test_chunk_and_recurrent_modes_agree(chunk_size, length):
    """Same weights, float64; T = 11 not a multiple of chunk_size = 4, and T = 5 shorter than a chunk of 64."""
    torch.manual_seed(0)
    chunk = GatedDeltaNet(d_model=12, n_heads=3, chunk_size=chunk_size, mode="chunk").double()
    recurrent = GatedDeltaNet(d_model=12, n_heads=3, chunk_size=chunk_size, mode="recurrent").double()
    recurrent.load_state_dict(chunk.state_dict())
    x = torch.randn(2, length, 12, dtype=torch.float64)
    y_chunk, _ = chunk(x)
    y_recurrent, _ = recurrent(x)
    assert y_chunk.dtype == torch.float64
    torch.testing.assert_close(y_chunk, y_recurrent, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_causal(mode):
    """Changing positions > t leaves the outputs at positions <= t unchanged (and changes a later one)."""
    torch.manual_seed(0)
    mixer = GatedDeltaNet(d_model=8, n_heads=2, chunk_size=4, mode=mode).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    y, _ = mixer(x)
    for t in (0, 3, 4, 8):
        perturbed = x.clone()
        perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:])
        y_perturbed, _ = mixer(perturbed)
        torch.testing.assert_close(y_perturbed[:, :t + 1], y[:, :t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(y_perturbed[:, t + 1:], y[:, t + 1:])


def test_short_convolution_by_hand():
    """2 channels, kernel 3: channel c at t = silu(w_c0 x_c[t-2] + w_c1 x_c[t-1] + w_c2 x_c[t]), zeros before t=0;
    no channel sees another (depthwise), no position sees a later one (causal)."""
    conv = ShortConvolution(channels=2, kernel_size=3)
    assert conv.conv.weight.shape == (2, 1, 3) and conv.conv.bias is None
    with torch.no_grad():
        conv.conv.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, -1.0, 1.0]]]))
    x = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]])  # (B=1, T=4, C=2)
    # channel 0: t0 = 3*1 = 3; t1 = 2*1 + 3*2 = 8; t2 = 1*1 + 2*2 + 3*3 = 14; t3 = 2 + 6 + 12 = 20
    # channel 1: t0 = 10; t1 = -10 + 20 = 10; t2 = -20 + 30 = 10; t3 = 10
    before = torch.tensor([[[3.0, 10.0], [8.0, 10.0], [14.0, 10.0], [20.0, 10.0]]])
    torch.testing.assert_close(conv(x), F.silu(before))
    assert conv(x[:, :2]).shape == (1, 2, 2)


def test_initial_decay_parameters():
    torch.manual_seed(0)
    mixer = GatedDeltaNet(d_model=64, n_heads=64, head_dim=2)  # 64 draws of each
    A = mixer.A_log.exp()
    assert A.shape == (64,) and (A >= 1).all() and (A < 16).all()
    dt = F.softplus(mixer.dt_bias.double())
    assert (dt >= 0.001 - 1e-6).all() and (dt <= 0.1 + 1e-6).all()
    assert dt.max() / dt.min() > 10  # log-uniform: spread over the decades, not one value
    y, _ = mixer(torch.randn(1, 3, 64))
    assert torch.isfinite(y).all()


def test_no_weight_decay_names_resolve_and_reach_the_transformer():
    mixer = GatedDeltaNet(d_model=8, n_heads=2)
    names = dict(mixer.named_parameters())
    assert mixer.no_weight_decay() == {"A_log", "dt_bias"} and mixer.no_weight_decay() <= set(names)
    assert GatedDeltaNet.parameter_roles == {"A_log": "bias", "dt_bias": "bias"}
    net = Transformer(vocab_size=10, num_classes=10, seq_len=6, n_layers=2, d_model=8,
                      mixer=partial(GatedDeltaNet, n_heads=2), ffn=MLPFFN)
    declared = net.no_weight_decay()
    assert {"blocks.0.attn.A_log", "blocks.0.attn.dt_bias", "blocks.1.attn.A_log", "blocks.1.attn.dt_bias"} <= declared
    assert declared <= dict(net.named_parameters()).keys()
    out = net(torch.randint(0, 10, (2, 6)))
    assert out.logits.shape == (2, 6, 10)


def test_parameter_roles_exempt_the_decay_parameters_from_weight_decay():
    from lightning_modules.param_groups import categories  # the project's rule (nets/ itself imports nothing of it)
    found = categories(GatedDeltaNet(d_model=8, n_heads=2))
    assert {"A_log", "dt_bias"} <= found["biases"] and found["declared"] == {"A_log", "dt_bias"}
    assert "o_norm.weight" in found["norms"]


@pytest.mark.parametrize("use_gate", [True, False])
def test_gradients_reach_every_parameter(use_gate):
    torch.manual_seed(0)
    mixer = GatedDeltaNet(d_model=8, n_heads=2, chunk_size=4, use_gate=use_gate)
    y, _ = mixer(torch.randn(2, 6, 8))
    y.square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("settings, key", [
    (dict(d_model=10, n_heads=4), "n_heads"),
    (dict(d_model=8, n_heads=2, mode="parallel"), "mode"),
    (dict(d_model=8, n_heads=0), "n_heads"),
    (dict(d_model=8, n_heads=2, expand_v=0.3), "expand_v"),
    (dict(d_model=8, n_heads=2, conv_size=0), "conv_size"),
    (dict(d_model=8, n_heads=2, chunk_size=0), "chunk_size"),
    (dict(d_model=8, n_heads=2, kernel="triton"), "kernel"),
])
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError) as err:
        GatedDeltaNet(**settings)
    assert err.value.key == key and str(err.value).startswith(f"{key}=")


def test_bad_setting_in_the_transformer_is_qualified_by_the_slot():
    with pytest.raises(ConfigError) as err:
        Transformer(10, 10, 6, d_model=8, mixer=partial(GatedDeltaNet, n_heads=3))
    assert err.value.key == "mixer.n_heads"


def test_the_cpu_runs_the_pytorch_form_and_kernel_fla_is_refused_where_it_cannot_run():
    layer = GatedDeltaNet(d_model=8, n_heads=2)  # kernel=auto
    assert not layer.uses_fla(torch.randn(1, 5, 8))  # a CPU input: the reference form, installed or not
    refused = fla_choice.fla_refusal()
    if refused is None:  # a GPU machine where fla runs: kernel=fla is built, and refuses a CPU input
        with pytest.raises(RuntimeError, match="runs on cuda inputs"):
            GatedDeltaNet(d_model=8, n_heads=2, kernel="fla")(torch.randn(1, 5, 8))
    else:
        with pytest.raises(ConfigError) as err:
            GatedDeltaNet(d_model=8, n_heads=2, kernel="fla")
        assert err.value.key == "kernel" and str(err.value) == f"kernel='fla' is not allowed: expected auto or " \
                                                               f"torch: {refused}"

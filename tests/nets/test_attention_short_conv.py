"""Softmax attention with a short convolution on q, k, v (nets/parts/attention.py, conv_size): against a computation by hand,
causal, and no change at all to nets built without it (attention at selected queries: test_rotary.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from nets import SoftmaxAttention


def conv_attention_by_hand(attn, x, kernel):
    """qkv = x W^T + b; channel c at t = silu(sum_j w_c[j] qkv_c[t - kernel + 1 + j]) (zeros before 0); then causal
    softmax attention per head and the output projection; written out with loops over taps and heads."""
    b, t, d = x.shape
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
    w = attn.conv.conv.weight[:, 0]  # (3D, kernel)
    mixed = torch.zeros_like(qkv)
    for j in range(kernel):
        shift = kernel - 1 - j  # tap j reads position t - shift
        mixed[:, shift:] += w[:, j] * qkv[:, : t - shift]
    q, k, v = F.silu(mixed).split(d, dim=-1)
    h, e = attn.n_heads, d // attn.n_heads
    heads = []
    for i in range(h):
        qi, ki, vi = (z[..., i * e:(i + 1) * e] for z in (q, k, v))
        scores = qi @ ki.transpose(1, 2) / math.sqrt(e)
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        heads.append(scores.softmax(-1) @ vi)
    return F.linear(torch.cat(heads, dim=-1), attn.proj.weight, attn.proj.bias)


def test_equals_the_computation_by_hand():
    torch.manual_seed(0)
    attn = SoftmaxAttention(12, n_heads=3, conv_size=3).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    y, _ = attn(x)
    torch.testing.assert_close(y, conv_attention_by_hand(attn, x, 3), rtol=0, atol=1e-12)
    y_explicit, aux = attn(x, return_attention=True)
    torch.testing.assert_close(y_explicit, y, rtol=0, atol=1e-12)
    assert attn.conv.conv.weight.shape == (36, 1, 3)  # depthwise over q, k and v channels


@pytest.mark.parametrize("rotary", [False, True])
def test_causal(rotary):
    """Changing positions > t leaves the outputs at positions <= t unchanged (and changes a later one)."""
    torch.manual_seed(0)
    attn = SoftmaxAttention(8, n_heads=2, rotary=rotary, conv_size=4).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    y, _ = attn(x)
    for t in (0, 2, 5):
        perturbed = x.clone()
        perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:])
        torch.testing.assert_close(attn(perturbed)[0][:, :t + 1], y[:, :t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(attn(perturbed)[0][:, t + 1:], y[:, t + 1:])


def test_without_a_convolution_nothing_changes():
    """conv_size=0 (the default) adds no parameter and draws no random number: earlier nets keep their init."""
    torch.manual_seed(3)
    plain = SoftmaxAttention(16, n_heads=4)
    torch.manual_seed(3)
    explicit = SoftmaxAttention(16, n_heads=4, conv_size=0)
    assert plain.conv is None and list(plain.state_dict()) == list(explicit.state_dict()) == [
        "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    for name, value in plain.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[name]), name


@pytest.mark.parametrize("conv_size", [-1, 2.0, True, "4"])
def test_a_bad_conv_size_is_refused_in_one_line(conv_size):
    with pytest.raises(ConfigError) as info:
        SoftmaxAttention(8, n_heads=2, conv_size=conv_size)
    assert info.value.key == "conv_size" and "\n" not in str(info.value)

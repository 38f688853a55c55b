"""Rotary position embedding (nets/kernels/rotary.py) and softmax attention with it (nets/parts/attention.py): against a complex-number
reference, the relative-position property, the attention unchanged without it, and attention at selected queries."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from nets import SoftmaxAttention, apply_rotary


def complex_rotary(x, positions, base=10000.0):
    """Channel pairs (i, i + d/2) as complex numbers times exp(i * position * theta_i)."""
    d = x.shape[-1]
    theta = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    angles = positions.to(torch.float64).unsqueeze(-1) * theta  # (T, d/2) or (B, T, d/2)
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)
    z = torch.complex(x[..., : d // 2], x[..., d // 2:]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1)


def test_matches_the_complex_number_form():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    positions = torch.arange(7)
    torch.testing.assert_close(apply_rotary(x, positions), complex_rotary(x, positions), rtol=0, atol=1e-12)
    per_row = torch.randint(0, 500, (2, 7))  # gathered queries: each row its own positions
    torch.testing.assert_close(apply_rotary(x, per_row), complex_rotary(x, per_row), rtol=0, atol=1e-12)
    torch.testing.assert_close(apply_rotary(x, per_row, base=100.0), complex_rotary(x, per_row, base=100.0),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(apply_rotary(x[1:], per_row[1]), apply_rotary(x, per_row)[1:])


def test_one_pair_by_hand():
    """d = 2: one pair at frequency 1, so position m turns (1, 0) by m radians; position 0 is the identity."""
    x = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 1, 3, 2)
    out = apply_rotary(x, torch.tensor([0, 1, 2]))
    expected = torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)], [math.cos(2), math.sin(2)]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected)


def test_scores_depend_on_the_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16, dtype=torch.float64).unbind(0)

    def score(m, n):
        return (apply_rotary(q, torch.tensor([m])) * apply_rotary(k, torch.tensor([n]))).sum().item()

    for offset in (0, 1, 5):
        assert score(3 + offset, 3) == pytest.approx(score(40 + offset, 40), abs=1e-12)
        assert score(offset, 0) == pytest.approx(score(100 + offset, 100), abs=1e-12)
    assert abs(score(5, 0) - score(1, 0)) > 1e-3  # different offsets: different scores


def test_dtype_kept_and_an_odd_width_refused():
    x = torch.randn(1, 2, 5, 4, dtype=torch.bfloat16)
    assert apply_rotary(x, torch.arange(5)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="even"):
        apply_rotary(torch.randn(1, 1, 2, 3), torch.arange(2))


def attention_by_hand(attn, x, rotary=False):
    """Causal attention from the module's own qkv and proj weights, without SDPA."""
    h = attn.n_heads
    q, k, v = (F.linear(x, attn.qkv.weight, attn.qkv.bias)).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
    t = x.shape[1]
    if rotary:
        q, k = complex_rotary(q, torch.arange(t)), complex_rotary(k, torch.arange(t))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return F.linear(y, attn.proj.weight, attn.proj.bias)


@pytest.mark.parametrize("rotary", [False, True])
def test_softmax_attention_equals_the_computation_by_hand(rotary):
    torch.manual_seed(0)
    attn = SoftmaxAttention(16, n_heads=4, rotary=rotary).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, aux = attn(x)
    torch.testing.assert_close(y, attention_by_hand(attn, x, rotary), rtol=0, atol=1e-12)
    y_explicit, aux = attn(x, return_attention=True)
    torch.testing.assert_close(y_explicit, y, rtol=0, atol=1e-12)
    assert aux["attention"].shape == (2, 4, 9, 9)


def test_rotary_draws_no_random_numbers():
    """Same seed, same weights with and without rotary: nets built before it keep their init."""
    torch.manual_seed(3)
    plain = SoftmaxAttention(16, n_heads=4)
    torch.manual_seed(3)
    rotated = SoftmaxAttention(16, n_heads=4, rotary=True)
    for (name, a), (_, b) in zip(plain.state_dict().items(), rotated.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(1, 5, 16)
    assert not torch.allclose(plain(x)[0][:, 1:], rotated(x)[0][:, 1:])  # position 0 is not turned; later ones are


@pytest.mark.parametrize("rotary, bias", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("block_size", [10, 4])
def test_attend_at_every_position_is_the_full_forward(rotary, bias, block_size):
    """Every position as a query, in one block of 10 or in blocks of 4 (the last one of 2 positions, padded with
    position 9 again): the full forward's rows."""
    torch.manual_seed(0)
    attn = SoftmaxAttention(16, n_heads=2, bias=bias, rotary=rotary).double()
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    n_blocks = -(-10 // block_size)
    positions = torch.arange(n_blocks * block_size).clamp(max=9).reshape(1, n_blocks, block_size).expand(3, -1, -1)
    out = attn.attend_at(x, positions, block_size).reshape(3, -1, 16)[:, :10]
    torch.testing.assert_close(out, attn(x)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("rotary, conv_size", [(False, 0), (True, 0), (False, 4), (True, 4)])
def test_attend_at_a_subset_is_those_rows_of_the_full_forward(rotary, conv_size):
    """Two queries in each block of 4 positions (repeats allowed: a block's spare slots hold any of its positions):
    each equals the full forward's row at its original position (so causal by original position, and a block's
    queries see every key they need although the keys stop at the block's end); the gradient stays finite. With a
    short convolution a query depends on the tokens before it too, and still equals the full forward's."""
    torch.manual_seed(0)
    attn = SoftmaxAttention(16, n_heads=2, rotary=rotary, conv_size=conv_size).double()
    x = torch.randn(3, 10, 16, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[[1, 3], [5, 5], [9, 8]],
                              [[0, 0], [7, 4], [8, 8]],
                              [[3, 2], [6, 7], [9, 9]]])  # (B, N, S): blocks [0, 4), [4, 8), [8, 10)
    out = attn.attend_at(x, positions, 4)
    full, _ = attn(x)
    assert out.shape == (3, 3, 2, 16)
    torch.testing.assert_close(out, full.gather(1, positions.reshape(3, 6, 1).expand(-1, -1, 16)).reshape(out.shape),
                               rtol=0, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(attn.qkv.weight.grad).all()


def test_an_odd_head_width_refuses_rotary():
    with pytest.raises(ConfigError) as info:
        SoftmaxAttention(12, n_heads=4, rotary=True)
    assert info.value.key == "rotary" and "\n" not in str(info.value)
    SoftmaxAttention(12, n_heads=4)  # without rotary an odd width is fine

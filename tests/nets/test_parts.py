"""The parts of a transformer block (nets/parts/attention.py, nets/parts/ffns.py, nets/parts/block.py) and the aux tensors they return."""
import pytest
import torch
from torch import nn

from core.errors import ConfigError
from nets import GLUFFN, MLPFFN, Block, NetOutput, RoutedFFN, SoftmaxAttention


def test_glu_shapes_and_width():
    torch.manual_seed(0)
    glu = GLUFFN(d_model=8, d_hidden=12)
    assert (glu.gate.weight.shape, glu.up.weight.shape, glu.down.weight.shape) == ((12, 8), (12, 8), (8, 12))
    out, aux = glu(torch.randn(3, 5, 8))
    assert out.shape == (3, 5, 8) and aux == {}
    assert GLUFFN(d_model=8).up.out_features == 32  # null = 4 * d_model
    assert GLUFFN(d_model=8, bias=False).gate.bias is None


def test_glu_by_hand():
    """d_model 2, d_hidden 2, relu: down(relu(gate(x)) * up(x)) on one token, every number written out."""
    glu = GLUFFN(d_model=2, d_hidden=2, activation="relu")
    with torch.no_grad():
        glu.gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        glu.gate.bias.copy_(torch.tensor([0.5, 0.0]))
        glu.up.weight.copy_(torch.tensor([[2.0, 1.0], [1.0, 1.0]]))
        glu.up.bias.copy_(torch.tensor([0.0, 1.0]))
        glu.down.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
        glu.down.bias.copy_(torch.tensor([0.0, -1.0]))
    x = torch.tensor([[1.0, 3.0]])
    # gate(x) = [1 + 0.5, -3] -> relu [1.5, 0]; up(x) = [2 + 3, 1 + 3 + 1] = [5, 5]; product [7.5, 0]
    # down([7.5, 0]) = [7.5 + 0, 0 + 0 - 1] = [7.5, -1]
    out, _ = glu(x)
    torch.testing.assert_close(out, torch.tensor([[7.5, -1.0]]))


def test_a_glu_matched_to_the_dense_mlp_takes_its_own_width():
    """match=dense reads d_hidden as the dense MLP's width (nets/parts/matching.py; counts in tests/nets/test_matching.py)."""
    assert GLUFFN(d_model=64, d_hidden=256, match="dense").up.out_features == 170  # (2*64 + 1) * 256 / (3*64 + 2)
    assert GLUFFN(d_model=64, d_hidden=256, bias=False, match="dense").up.out_features == 171  # 2/3 * 256
    assert GLUFFN(d_model=8, match="dense").gate.out_features == 21  # null: 4 * d_model = 32 matched
    assert GLUFFN(d_model=64, d_hidden=256).up.out_features == 256


def test_mlp_ffn_is_down_act_up():
    torch.manual_seed(0)
    ffn = MLPFFN(d_model=4, d_hidden=6, activation="relu")
    x = torch.randn(2, 3, 4)
    out, aux = ffn(x)
    torch.testing.assert_close(out, ffn.down(torch.relu(ffn.up(x))))
    assert aux == {} and ffn.up.out_features == 6 and MLPFFN(d_model=4).up.out_features == 16


def test_routed_ffn_weights_sum_to_one_and_its_gate_is_declared():
    torch.manual_seed(0)
    ffn = RoutedFFN(d_model=8, n_heads=3, d_hidden=5)
    out, aux = ffn(torch.randn(2, 4, 8))
    assert out.shape == (2, 4, 8) and list(aux) == ["routing"] and aux["routing"].shape == (2, 4, 3)
    torch.testing.assert_close(aux["routing"].sum(-1), torch.ones(2, 4))
    assert ffn.no_weight_decay() == {"gate.weight", "gate.bias"}
    assert ffn(torch.randn(5, 8))[0].shape == (5, 8)  # any leading shape


@pytest.mark.parametrize("make, key", [(lambda: GLUFFN(8, activation="tanh"), "activation"),
                                       (lambda: MLPFFN(8, d_hidden=0), "d_hidden"),
                                       (lambda: RoutedFFN(8, n_heads=1), "n_heads"),
                                       (lambda: GLUFFN(8, match="dense_total"), "match"),
                                       (lambda: SoftmaxAttention(8, n_heads=3), "n_heads"),
                                       (lambda: SoftmaxAttention(8, bias=None), "bias")])
def test_parts_name_their_own_bad_settings(make, key):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key and "\n" not in str(info.value)


class Doubler(nn.Module):
    """A stand-in part: 2x, with an aux tensor and a declared parameter."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(1, 1)

    def forward(self, x, return_attention=False):
        return 2 * x, {"double": x.sum()}

    def no_weight_decay(self):
        return {"scale.weight"}


def test_a_block_is_two_pre_norm_residuals_and_files_aux_under_its_slots():
    block = Block(4, mixer=Doubler(), ffn=Doubler(), norm="none")
    x = torch.randn(2, 3, 4)
    y, aux = block(x)
    torch.testing.assert_close(y, 9 * x)  # x + 2x = 3x, then 3x + 6x
    assert list(aux) == ["mixer/double", "ffn/double"]
    assert block.no_weight_decay() == {"attn.scale.weight", "ffn.scale.weight"}
    assert isinstance(Block(4, Doubler(), Doubler()).ln_attn, nn.LayerNorm)


def test_rmsnorm_scales_by_the_root_mean_square_only():
    block = Block(4, mixer=Doubler(), ffn=Doubler(), norm="rmsnorm")
    assert isinstance(block.ln_attn, nn.RMSNorm) and isinstance(block.ln_ffn, nn.RMSNorm)
    assert [name for name, _ in block.ln_ffn.named_parameters()] == ["weight"]  # a scale, no bias
    x = torch.tensor([[3.0, -1.0, 1.0, 1.0]])  # mean square 3: x / sqrt(3)
    torch.testing.assert_close(block.ln_attn(x), x / 3**0.5, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="layernorm, rmsnorm, none"):
        Block(4, Doubler(), Doubler(), norm="batchnorm")


def test_routing_and_attention_are_the_aux_entries_of_that_name_in_layer_order():
    w0, w1, a0 = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    out = NetOutput(logits=torch.zeros(1), aux={"layer_0/mixer/attention": a0, "layer_0/ffn/routing": w0,
                                                "layer_1/ffn/routing": w1, "layer_1/ffn/not_routing": a0})
    assert out.routing == [w0, w1] and out.attention == [a0]
    assert list(out.named("routing")) == ["layer_0/ffn/routing", "layer_1/ffn/routing"]
    with pytest.raises(AttributeError):
        out.routing = []  # read-only: the aux dict is the one store
    assert NetOutput(torch.zeros(1)).routing == [] and NetOutput(torch.zeros(1)).attention == []

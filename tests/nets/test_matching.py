"""Parameter matching (nets/parts/matching.py): GLU and MoE FFNs sized to a dense MLP FFN's parameter count, counted on
real modules."""
import pytest

from nets import GLUFFN, MLPFFN, MoEFFN
from nets.parts.matching import ffn_parameter_count, matched_hidden

# (d_model, dense hidden): the study's size first. Rounding a width moves the count by up to half a unit's
# parameters, E (3 d_model + 2) / 2 for E GLU experts, about 3E / 4h of the dense count: 1 % is in reach when the
# experts are wide enough (h >= 75 E), and these sizes are (the study's, E = 4, is within 0.2 %).
SIZES = [(64, 256), (128, 512), (96, 384), (128, 256), (256, 1024)]
CASES = [(d, h, e) for d, h in SIZES for e in (2, 4)] + [(32, 128, 2), (64, 512, 8), (128, 1024, 8)]

def count(part) -> int:
    return sum(p.numel() for p in part.parameters())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_model, dense_hidden", SIZES)
def test_the_closed_form_counts_are_the_modules(d_model, dense_hidden, bias):
    assert ffn_parameter_count("mlp", d_model, dense_hidden, bias) == count(MLPFFN(d_model, dense_hidden, bias=bias))
    assert ffn_parameter_count("glu", d_model, dense_hidden, bias) == count(GLUFFN(d_model, dense_hidden, bias=bias))


def variants(d_model, dense_hidden, bias, n_experts):
    """The matched parts, built as the configs build them (d_hidden is the dense width, `match` says what to do)."""
    moe = dict(d_model=d_model, d_hidden=dense_hidden, bias=bias, n_experts=n_experts)
    return {"glu": GLUFFN(d_model, dense_hidden, bias=bias, match="dense"),
            "moe_total": MoEFFN(**moe, match="dense_total"),
            "moe_active": MoEFFN(**moe, match="dense_active"),
            "moe_glu_total": MoEFFN(**moe, expert="glu", match="dense_total"),
            "moe_glu_active": MoEFFN(**moe, expert="glu", match="dense_active")}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_model, dense_hidden, n_experts", CASES)
def test_matched_parts_count_within_one_percent_of_the_dense_ffn(d_model, dense_hidden, bias, n_experts):
    dense = count(MLPFFN(d_model, dense_hidden, bias=bias))
    parts = variants(d_model, dense_hidden, bias, n_experts)
    for name in ("glu", "moe_total", "moe_glu_total"):
        assert abs(count(parts[name]) - dense) <= 0.01 * dense, (name, count(parts[name]), dense)
    for name in ("moe_active", "moe_glu_active"):
        for expert in parts[name].experts:
            assert abs(count(expert) - dense) <= 0.01 * dense, (name, count(expert), dense)
    assert all(count(expert) == dense for expert in parts["moe_active"].experts)  # exactly the dense MLP
    assert parts["moe_active"].d_hidden == dense_hidden


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_model, dense_hidden", [*SIZES, (32, 128), (8, 32), (5, 7)])
def test_the_matched_width_is_the_nearest_integer(d_model, dense_hidden, bias):
    """No neighbouring width gets closer to the dense count (sizes included where 1 % is out of reach)."""
    dense = ffn_parameter_count("mlp", d_model, dense_hidden, bias)
    for expert, n, router in [("glu", 1, False), ("mlp", 4, True), ("glu", 4, True), ("mlp", 8, True),
                              ("glu", 8, True)]:
        h = matched_hidden(expert, d_model, dense_hidden, bias, n_experts=n, router=router)

        def gap(width):
            return abs(n * ffn_parameter_count(expert, d_model, width, bias) + (n * d_model if router else 0) - dense)

        assert h >= 1 and gap(h) <= gap(h + 1) and (h == 1 or gap(h) <= gap(h - 1)), (expert, n, h)


def test_the_studys_sizes():
    """d_model 64, dense hidden 256, with biases: the widths and counts the MoE-expressivity study compares."""
    parts = variants(64, 256, True, 4)
    assert count(MLPFFN(64, 256)) == 33088
    assert {name: part.d_hidden if name != "glu" else part.up.out_features for name, part in parts.items()} == {
        "glu": 170, "moe_total": 63, "moe_active": 256, "moe_glu_total": 42, "moe_glu_active": 170}
    assert {name: count(part) for name, part in parts.items()} == {
        "glu": 33044, "moe_total": 33020, "moe_active": 4 * 33088 + 256, "moe_glu_total": 33104,
        "moe_glu_active": 4 * 33044 + 256}

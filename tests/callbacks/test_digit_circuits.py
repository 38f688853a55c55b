"""The circuits diagnostic on tiny transformers on 2-digit +7: each number against a hand computation (entropy,
attention to digits, ablations as nets with the part cut out, attribution that sums to the logit, mutual
information), the net untouched by ablations even when a forward raises, one-line stand-asides, and short real
fits that leave figures in plots/ and a flat summary part."""
import copy
import math
from collections import Counter
from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from callbacks.diagnostics import circuit_math as cm
from callbacks.diagnostics.digit_circuits import DigitCircuits
from datamodules import ModularArithmetic, ReversedDigitAddition
from lightning_modules import AdamWRecipe, TaskModule
from nets import MLP, SoftmaxAttention, Transformer
from tests.nets.helpers import transformer

pytestmark = pytest.mark.usefixtures("one_thread")
N_DIGITS, SEQ_LEN, VOCAB = 2, 6, 12


class TinyMoE(nn.Module):
    """A stand-in for the MoE FFN contract: top-k of linear experts, aux `expert_index` (N, T, k) sorted by router
    probability (torch.topk) and `routing` (N, T, E)."""

    def __init__(self, d_model: int, n_experts: int = 3, k: int = 2):
        super().__init__()
        self.k = k
        self.router = nn.Linear(d_model, n_experts)
        self.experts = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_experts))

    def forward(self, x):
        probs = self.router(x).softmax(-1)
        top, index = probs.topk(self.k, dim=-1)
        outs = torch.stack([expert(x) for expert in self.experts], -2)  # (..., E, D)
        chosen = outs.gather(-2, index[..., None].expand(*index.shape, x.shape[-1]))
        return (top[..., None] * chosen).sum(-2), {"expert_index": index, "routing": probs}


def tiny(norm="layernorm", seed=0):
    torch.manual_seed(seed)
    return transformer(VOCAB, VOCAB, SEQ_LEN, n_layers=1, d_model=16, n_heads=2, norm=norm)


def moe_net(seed=0):
    torch.manual_seed(seed)
    return Transformer(VOCAB, VOCAB, SEQ_LEN, n_layers=1, d_model=16, mixer=partial(SoftmaxAttention, n_heads=2),
                       ffn=partial(TinyMoE, n_experts=3))


@pytest.fixture(scope="module")
def task():
    return ReversedDigitAddition(n_digits=N_DIGITS)


def probe(task):
    return task.examples("val", 20)


def hooks_left(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


# ---- the numbers, by hand -------------------------------------------------------------------------------------

def test_the_trace_splits_the_stream_into_its_components_and_exact_match_is_teacher_forced(task):
    net, batch = tiny(), probe(task)
    traced = cm.trace(net, batch.inputs)
    parts = traced.embedding + traced.attention_out[0] + traced.ffn_out[0]
    assert torch.allclose(parts, traced.residual, atol=1e-6)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(traced.logits, net(batch.inputs).logits, atol=1e-5)
    predicted = traced.logits.argmax(-1)[:, N_DIGITS:2 * N_DIGITS + 1]  # the queries SEP, o_0, o_1 -> o_0..o_2
    expected = (predicted == batch.targets[:, N_DIGITS:2 * N_DIGITS + 1]).all(1).float().mean().item()
    assert cm.exact_match(traced.logits, batch) == expected
    assert cm.answer_queries(batch, SEQ_LEN).tolist() == [2, 3, 4]


def test_attention_entropy_and_attention_to_digits_by_hand(task):
    batch = probe(task)
    attention = cm.trace(tiny(), batch.inputs).aux["layer_0/mixer/attention"]  # (N, H, T, T)
    entropy = cm.attention_entropy(attention, torch.tensor([2, 3, 4]))
    operand, lower = cm.digit_attention(attention, N_DIGITS)
    for h in range(2):
        values = [-sum(p * math.log(p) for p in attention[i, h, q].tolist() if p > 0)
                  for i in range(len(batch.inputs)) for q in (2, 3, 4)]
        assert entropy[h].item() == pytest.approx(sum(values) / len(values), rel=1e-6)
        # o_0 is predicted at SEP (position 2) from d_0 (position 0), o_1 at position 3 from d_1 (position 1)
        assert operand[h].item() == pytest.approx(
            (attention[:, h, 2, 0].mean() + attention[:, h, 3, 1].mean()).item() / 2, rel=1e-6)
        # carries: o_1 (position 3) from d_0; o_2 (position 4) from d_0 and d_1
        assert lower[h].item() == pytest.approx(
            (attention[:, h, 3, 0].mean() + attention[:, h, 4, :2].sum(-1).mean()).item() / 2, rel=1e-6)
    uniform = torch.full((1, 1, 3, 3), 1 / 3)
    assert cm.attention_entropy(uniform, torch.tensor([2])).item() == pytest.approx(math.log(3))


def cut(net, what, head=None):
    """A copy of `net` with a part's contribution removed by zeroing weights: the zero-ablations' reference."""
    net = copy.deepcopy(net)
    attn, ffn = net.blocks[0].attn, net.blocks[0].ffn
    with torch.no_grad():
        if what == "ffn":
            ffn.down.weight.zero_(), ffn.down.bias.zero_()
        elif what == "attention":
            attn.proj.weight.zero_(), attn.proj.bias.zero_()
        else:  # a head's values are zero, so is its slice of proj's input
            width = 16 // attn.n_heads
            rows = slice(2 * 16 + head * width, 2 * 16 + (head + 1) * width)
            attn.qkv.weight[rows].zero_(), attn.qkv.bias[rows].zero_()
    return net


@pytest.mark.parametrize("what", ["ffn", "attention", "head_0", "head_1"])
def test_zero_ablations_equal_nets_with_the_part_cut_out(task, what):
    net, batch = tiny(), probe(task)
    plan = {a.name: a for a in cm.ablations(net, cm.trace(net, batch.inputs), "zero")}
    name = f"layer_0/{what}_zero" if what.startswith("head") else f"{what}_zero"
    ablated = cm.ablated_logits(net, batch.inputs, plan[name].patches)
    reference = cut(net, what.split("_")[0], int(what[-1]) if what.startswith("head") else None)
    reference.eval()
    with torch.no_grad():
        assert torch.allclose(ablated, reference(batch.inputs, return_attention=True).logits, atol=1e-5)
    assert set(plan) == {"ffn_zero", "attention_zero", "layer_0/head_0_zero", "layer_0/head_1_zero"}


def test_mean_ablation_on_a_probe_of_one_repeated_example_changes_nothing(task):
    net, batch = tiny(), probe(task)
    same = batch.inputs[:1].repeat(8, 1)
    traced = cm.trace(net, same)
    for ablation in cm.ablations(net, traced, "mean"):
        assert torch.allclose(cm.ablated_logits(net, same, ablation.patches), traced.logits, atol=1e-5), ablation.name


def test_ablations_leave_the_net_unchanged_also_when_the_ablated_forward_raises(task):
    net, batch = tiny(), probe(task)
    net.train()
    state = copy.deepcopy(net.state_dict())
    net.eval()
    with torch.no_grad():
        before = net(batch.inputs).logits
    net.train()
    traced = cm.trace(net, batch.inputs)
    for mode in cm.ABLATION_MODES:
        for ablation in cm.ablations(net, traced, mode):
            cm.ablated_logits(net, batch.inputs, ablation.patches)
    wrong = cm.Patch(net.blocks[0].attn.proj, torch.zeros(SEQ_LEN - 1, 16), slice(0, 8))  # T does not broadcast
    with pytest.raises(RuntimeError):
        cm.ablated_logits(net, batch.inputs, (cm.Patch(net.blocks[0].ffn, None), wrong))
    assert hooks_left(net) == 0 and net.training
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(batch.inputs).logits, before)


@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm"])
def test_logit_attribution_sums_to_the_correct_logit(task, norm):
    net, batch = tiny("none" if norm == "rmsnorm" else norm), probe(task)
    if norm == "rmsnorm":  # swapped in with a gain that is not 1, whatever norms the transformer offers
        net.ln_final = nn.RMSNorm(16)
        with torch.no_grad():
            net.ln_final.weight.uniform_(0.5, 1.5)
    if norm == "layernorm":  # a norm with a gain and a bias that are not 1 and 0
        with torch.no_grad():
            net.ln_final.weight.uniform_(0.5, 1.5), net.ln_final.bias.uniform_(-0.5, 0.5)
    traced = cm.trace(net, batch.inputs)
    parts = cm.logit_attribution(net, traced, batch, cm.answer_queries(batch, SEQ_LEN))
    total = parts["embedding"] + parts["attention"] + parts["ffn"] + parts["constant"]
    assert torch.allclose(total, parts["logit"], atol=1e-5)
    correct = traced.logits[:, 2:5].gather(-1, batch.targets[:, 2:5, None])[..., 0].reshape(-1).double()
    assert torch.allclose(parts["logit"], correct)
    if norm == "none":  # exact, no norm: the contributions are the unembedded components themselves
        w = net.unembed.weight[batch.targets[:, 2:5]].double()
        assert torch.allclose(parts["attention"], (traced.attention_out[0][:, 2:5].double() * w).sum(-1).reshape(-1))
        assert torch.equal(parts["constant"], torch.zeros_like(parts["constant"]))


# ---- experts and information ----------------------------------------------------------------------------------

def test_mutual_information_on_hand_made_assignments():
    generator = torch.Generator().manual_seed(0)
    operation = torch.tensor([0] * 30 + [1] * 50 + [2] * 20)
    h = -sum(p * math.log2(p) for p in (0.3, 0.5, 0.2))
    assert cm.entropy_bits(operation) == pytest.approx(h)
    assert cm.mutual_information_bits(operation, operation) == pytest.approx(h)
    assert cm.mutual_information_bits((operation + 1) % 3 + 4, operation) == pytest.approx(h)  # any relabelling
    a, b = torch.randint(0, 4, (200_000,), generator=generator), torch.randint(0, 3, (200_000,), generator=generator)
    assert cm.mutual_information_bits(a, b) < 1e-3
    # an expert that follows the position tells about the operation only through the position
    position = torch.randint(0, 3, (10_000,), generator=generator)
    op = torch.where(position == 0, 0, torch.randint(1, 3, (10_000,), generator=generator))
    assert cm.mutual_information_bits(position, op) > 0.5
    assert cm.conditional_mutual_information_bits(position, op, position) == pytest.approx(0, abs=1e-12)
    assert cm.conditional_mutual_information_bits(op, op, position) == pytest.approx(  # = H(op | position)
        sum((position == g).double().mean().item() * cm.entropy_bits(op[position == g]) for g in (1, 2)), rel=1e-9)


def test_top1_expert_is_the_chosen_one_with_the_largest_router_probability():
    routing = torch.tensor([[[0.1, 0.6, 0.3]], [[0.5, 0.2, 0.3]]])
    unsorted = torch.tensor([[[2, 1]], [[2, 0]]])
    chosen, n = cm.top1_experts({"layer_0/ffn/expert_index": unsorted, "layer_0/ffn/routing": routing}, 0)
    assert chosen.tolist() == [[1], [0]] and n == 3
    assert cm.top1_experts({"layer_0/ffn/routing": routing}, 0)[0].tolist() == [[1], [0]]  # a soft router
    assert cm.top1_experts({}, 0) is None
    shares = cm.usage(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 0, 2]), 3, 3)
    assert shares[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0]) and shares[1].isnan().all()


# ---- the callback ---------------------------------------------------------------------------------------------

def stand_aside_lines(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if "stands aside" in line]


def test_stands_aside_in_one_line_on_modular_arithmetic_and_on_an_mlp(task, capsys):
    modular = ModularArithmetic(p=5, format="tokens")
    callback = DigitCircuits()
    callback.setup(SimpleNamespace(datamodule=modular, is_global_zero=True), SimpleNamespace(net=tiny()), "fit")
    mlp = DigitCircuits()
    mlp.setup(SimpleNamespace(datamodule=task, is_global_zero=True), SimpleNamespace(net=MLP(4, 12)), "fit")
    assert stand_aside_lines(capsys) == [
        "[grokking-lab] circuits: stands aside (needs the reversed-digit structure (digit_structure()); this task "
        "has none)",
        "[grokking-lab] circuits: stands aside (needs a nets.Transformer with softmax attention; the net is a MLP)"]
    callback.on_train_end(None, None)
    assert callback.summary_part() is None


def fit(task, net, callback, tmp_path, steps=30):
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
                         callbacks=[callback], num_sanity_val_steps=0, limit_val_batches=0)
    module = TaskModule(net, task.spec, AdamWRecipe(lr=1e-2, weight_decay=0.0, fused=False))
    trainer.fit(module, datamodule=task)
    return module


def plots(tmp_path):
    return {p.name for p in (tmp_path / "plots").glob("*.png")}


def test_a_short_fit_draws_the_figures_and_leaves_a_flat_summary_part(task, tmp_path):
    callback = DigitCircuits(ablation="both")
    net = tiny()
    fit(task, net, callback, tmp_path)
    assert plots(tmp_path) == {"circuits_attention_by_chain_layer_0.png", "circuits_components.png"}
    part = callback.summary_part()
    heads = [f"layer_0/head_{h}" for h in range(2)]
    expected = {"circuits/exact_match", "circuits/probe_examples"}
    expected |= {f"circuits/{what}/{head}" for what in ("attn_entropy", "attn_to_operand", "attn_to_lower_digits")
                 for head in heads}
    expected |= {f"circuits/ablation/{part}_{mode}" for part in ("ffn", "attention", *heads)
                 for mode in ("mean", "zero")}
    expected |= {f"circuits/dla/{k}" for k in ("embedding", "attention", "ffn", "constant", "logit",
                                               "embedding_share", "attention_share", "ffn_share")}
    assert set(part) == expected and all(isinstance(v, float) for v in part.values())
    assert part["circuits/probe_examples"] == 20 and callback.history == []  # every_n_steps null: only at the end
    assert sum(part[f"circuits/dla/{k}_share"] for k in ("embedding", "attention", "ffn")) == pytest.approx(1)
    assert part["circuits/dla/logit"] == pytest.approx(
        sum(part[f"circuits/dla/{k}"] for k in ("embedding", "attention", "ffn", "constant")), abs=1e-5)
    batch = probe(task)
    reference = cm.trace(net, batch.inputs)
    assert part["circuits/exact_match"] == cm.exact_match(reference.logits, batch)
    assert sorted(callback.maps[0]) == sorted(batch.group.unique().tolist())  # one row per chain length present
    chain = int(batch.group[0])
    assert torch.allclose(callback.maps[0][chain],
                          reference.aux["layer_0/mixer/attention"][batch.group == chain].mean(0), atol=1e-6)


def test_a_short_fit_of_an_moe_net_reads_expert_use_against_the_operations(task, tmp_path):
    callback = DigitCircuits(every_n_steps=10)
    net = moe_net()
    fit(task, net, callback, tmp_path)
    assert "circuits_moe_usage_layer_0.png" in plots(tmp_path)
    assert [h["step"] for h in callback.history] == [0, 10, 20, 30]
    assert "circuits/moe/mi_expert_operation/layer_0" in callback.history[0]
    part = callback.summary_part()

    # independently: top-1 expert of each answer token (topk is sorted) against the digit operation
    batch = probe(task)
    structure = task.digit_structure()
    operations = structure.digit_operations[structure.indices["val"][:20]]
    net.eval()
    with torch.no_grad():
        top1 = net(batch.inputs).aux["layer_0/ffn/expert_index"][:, 2:5, 0]
    pairs = list(zip(top1.flatten().tolist(), operations.flatten().tolist()))
    joint, experts, ops = Counter(pairs), Counter(e for e, _ in pairs), Counter(o for _, o in pairs)
    m = len(pairs)
    mi = sum(c / m * math.log2(c * m / (experts[e] * ops[o])) for (e, o), c in joint.items())
    assert part["circuits/moe/mi_expert_operation/layer_0"] == pytest.approx(mi, abs=1e-9)
    h_ops = -sum(c / m * math.log2(c / m) for c in ops.values())
    assert part["circuits/moe/operation_entropy"] == pytest.approx(h_ops)
    for e in range(3):
        assert part[f"circuits/moe/usage/layer_0/o_0/expert_{e}"] == pytest.approx((top1[:, 0] == e).float().mean())
        plus_k = operations == 0  # +k is o_0 in every row
        assert part[f"circuits/moe/usage/layer_0/plus_k/expert_{e}"] == pytest.approx(
            (top1[plus_k] == e).float().mean())
    assert 0 <= part["circuits/moe/mi_expert_operation_given_position/layer_0"] <= mi + 1e-9


def test_the_configs_offer_circuits_alone_and_among_the_diagnostics(tmp_path):
    from runtime.config.compose import compose_config
    alone = compose_config(["callbacks=circuits"], output_dir=tmp_path).callbacks
    default = compose_config([], output_dir=tmp_path).callbacks
    every = compose_config(["callbacks=diagnostics"], output_dir=tmp_path).callbacks
    assert set(alone) == set(default) | {"circuits"}
    assert alone.circuits == every.circuits
    callback = instantiate(alone.circuits)
    assert isinstance(callback, DigitCircuits) and (callback.every_n_steps, callback.ablation) == (None, "mean")

"""Which kernel runs Gated DeltaNet (nets/kernels/fla_choice.py, nets/parts/gated_deltanet.py): fla's rule applied to a machine's facts,
the choice made when a layer is built, and what fla is handed (checked by the CPU stand-in of tests/fla_stand_in.py,
which returns the reference result)."""
from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from core.errors import ConfigError
from nets import GLUFFN, GatedDeltaNet, HybridLM, SoftmaxAttention
from nets.kernels import fla_choice
from nets.kernels.fla_choice import MachineFacts, refusal, version_key
from nets.parts.gated_deltanet import kernel_in_use
from runtime.config.build import build_net
from runtime.config.compose import compose_config
from tests.fla_stand_in import GOOD_MACHINE, force_fla

pytestmark = pytest.mark.usefixtures("one_thread")

H200_TRITON_36 = replace(GOOD_MACHINE, triton="3.6.0")  # the GPU report's machine: torch 2.11 ships Triton 3.6.0
HOPPER_REFUSAL = ("flash-linear-attention 0.6.0 needs Triton >= 3.7.1 or tilelang on Hopper GPUs "
                  "(this machine: Triton {})")
NOT_INSTALLED = "the flash-linear-attention package is not installed (pip install -e '.[fla]')"


@pytest.mark.parametrize("facts, refused", [
    (MachineFacts(), NOT_INSTALLED),
    (MachineFacts(fla="0.6.0"), "flash-linear-attention's kernels need a CUDA device (none here)"),
    (replace(GOOD_MACHINE, triton=None), "flash-linear-attention's kernels need Triton (not installed)"),
    (GOOD_MACHINE, None),
    (H200_TRITON_36, HOPPER_REFUSAL.format("3.6.0")),
    (replace(H200_TRITON_36, tilelang=True), None),  # fla's TileLang backend takes the gated backward
    (replace(GOOD_MACHINE, triton="3.4.0"), HOPPER_REFUSAL.format("3.4.0")),  # the first bad Triton
    (replace(GOOD_MACHINE, triton="3.7.0"), HOPPER_REFUSAL.format("3.7.0")),  # torch 2.12.0's
    (replace(GOOD_MACHINE, triton="3.7.1rc1"), HOPPER_REFUSAL.format("3.7.1rc1")),  # before the release
    (replace(GOOD_MACHINE, triton="3.7.1+git4a3f2b1"), None),  # a local build of the release
    (replace(GOOD_MACHINE, triton="3.8.0"), None),
    (replace(GOOD_MACHINE, triton="3.3.1"), None),  # before the regression
    (replace(H200_TRITON_36, device_name="NVIDIA GH200 480GB"), HOPPER_REFUSAL.format("3.6.0")),  # capability 9.0
    (replace(H200_TRITON_36, device_name="NVIDIA H100 PCIe", capability=None), HOPPER_REFUSAL.format("3.6.0")),
    (replace(H200_TRITON_36, device_name="NVIDIA A100-SXM4-80GB", capability=(8, 0)), None),
    (replace(H200_TRITON_36, device_name="NVIDIA B200", capability=(10, 0)), None),
])
def test_the_rule_refuses_what_fla_refuses_or_gets_wrong(facts, refused):
    """fla-core 0.6.0 raises in its backward (fla/ops/common/chunk_o.py) on Hopper (a device named "NVIDIA H..." or
    of capability 9.x) with 3.4.0 <= Triton < 3.7.1, unless its TileLang backend takes that kernel."""
    assert refusal(facts) == refused


def test_versions_compare_as_releases():
    assert version_key("3.6.0") < version_key("3.7.1rc1") < version_key("3.7.1") == version_key("3.7.1+gitabc")
    assert version_key("3.7") == version_key("3.7.0") < version_key("3.10.0")
    assert version_key("3.7.1.dev20261201") < version_key("3.7.1") <= version_key("3.7.1.post1")


@pytest.mark.parametrize("facts", [GOOD_MACHINE, H200_TRITON_36, MachineFacts(), MachineFacts(fla="0.6.0")],
                         ids=["fla-runs", "hopper-triton-3.6", "not-installed", "no-cuda"])
def test_the_layer_decides_when_built_and_notes_a_gpu_fallback_once(monkeypatch, capsys, facts):
    monkeypatch.setattr(fla_choice, "machine_facts", lambda: facts)
    monkeypatch.setattr(fla_choice, "_noted", set())
    refused = refusal(facts)
    layers = [GatedDeltaNet(d_model=8, n_heads=2) for _ in range(3)]  # kernel=auto
    assert [layer.runs_fla for layer in layers] == [refused is None] * 3
    assert not GatedDeltaNet(d_model=8, n_heads=2, mode="recurrent").runs_fla
    note = f"[grokking-lab] note: Gated DeltaNet runs its PyTorch form (kernel=auto): {refused}\n"
    # a GPU machine that cannot run fla says why, once; without CUDA the PyTorch form is the only one: no note
    assert capsys.readouterr().out == (note if refused is not None and facts.cuda else "")
    if refused is None:
        assert GatedDeltaNet(d_model=8, n_heads=2, kernel="fla").runs_fla
    else:
        with pytest.raises(ConfigError) as err:
            GatedDeltaNet(d_model=8, n_heads=2, kernel="fla")
        assert str(err.value) == f"kernel='fla' is not allowed: expected auto or torch: {refused}"
    net = HybridLM(12, 12, 6, layers=["gdn", "attn"], d_model=8, gdn=partial(GatedDeltaNet, n_heads=2),
                   attn=partial(SoftmaxAttention, n_heads=2))
    # where fla cannot run, a CUDA run compiles the PyTorch form (compile=auto); a CPU run and an ensemble do not
    expected = "fla (flash-linear-attention's Triton kernel)" if refused is None else f"torch, compiled ({refused})"
    assert kernel_in_use(net, "cuda") == expected
    assert kernel_in_use(net, "cpu") == (f"torch ({refused})" if refused else "torch (the run is on cpu)")
    vmapped = "torch (under torch.func.vmap, which fla's kernel does not support)"  # an ensemble's
    assert kernel_in_use(net, "cuda", vmapped=True) == (vmapped if refused is None else f"torch ({refused})")


def test_kernel_torch_reads_no_machine_facts(monkeypatch):
    def unreadable():
        raise AssertionError("kernel=torch must not look at the machine")

    monkeypatch.setattr(fla_choice, "machine_facts", unreadable)
    layer = GatedDeltaNet(d_model=8, n_heads=2, kernel="torch")
    assert not layer.runs_fla and kernel_in_use(layer, "cuda") == "torch, compiled (kernel=torch)"
    assert kernel_in_use(layer, "cpu") == "torch (kernel=torch)"
    assert kernel_in_use(SoftmaxAttention(d_model=8, n_heads=2), "cuda") is None


def test_kernel_fla_is_refused_in_one_line_under_its_key(monkeypatch, tmp_path):
    monkeypatch.setattr(fla_choice, "machine_facts", lambda: H200_TRITON_36)
    cfg = compose_config(["model=hybrid_lm", "data.format=tokens", "model.gdn.kernel=fla"], output_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        build_net(cfg.model, instantiate(cfg.data).spec)
    assert str(info.value) == ("model.gdn.kernel='fla' is not allowed: expected auto or torch: "
                               + HOPPER_REFUSAL.format("3.6.0"))


def test_kernel_fla_refuses_an_input_fla_cannot_take(monkeypatch):
    monkeypatch.setattr(fla_choice, "machine_facts", lambda: GOOD_MACHINE)
    layer = GatedDeltaNet(d_model=8, n_heads=2, kernel="fla")
    with pytest.raises(RuntimeError, match=r"runs on cuda inputs in float32, bfloat16 or float16 only \(got cpu"):
        layer(torch.randn(1, 5, 8))


@pytest.mark.parametrize("kernel", ["auto", "fla"])
def test_torch_func_transforms_and_reference_form_run_the_pytorch_form(monkeypatch, kernel):
    """fla's Function is ctx-style (the stand-in's too: torch.func would refuse it) and its backward is not
    differentiable, so under vmap and grad, and inside reference_form(), no kernel setting enters it; the numbers
    are the reference's (float64)."""
    fla, reference, stand_in = twins(monkeypatch, d_model=8, n_heads=2, kernel=kernel)
    fla, reference = fla.double(), reference.double()
    x = torch.randn(3, 2, 6, 8, dtype=torch.float64)  # 3 members' inputs for vmap
    fla(x[0])
    assert stand_in.calls == 1  # a plain forward runs it
    members = torch.func.vmap(lambda xs: fla(xs)[0])(x)
    torch.testing.assert_close(members, torch.stack([reference(xs)[0] for xs in x]), rtol=0, atol=1e-12)
    params = dict(fla.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(fla, p, (x[0],))[0].square().sum())(params)
    reference(x[0])[0].square().sum().backward()
    for (name, g), p_ref in zip(grads.items(), reference.parameters()):
        torch.testing.assert_close(g, p_ref.grad, rtol=0, atol=1e-12, msg=name)
    with fla_choice.reference_form():
        with fla_choice.reference_form():
            fla(x[0])
        fla(x[0])
    assert stand_in.calls == 1
    fla(x[0])
    assert stand_in.calls == 2  # and after it, fla again


@pytest.mark.skipif(fla_choice.fla_installed(), reason="this machine has flash-linear-attention")
def test_this_machine_without_fla_runs_the_pytorch_form():
    assert fla_choice.machine_facts() == MachineFacts() and fla_choice.fla_refusal() == NOT_INSTALLED
    assert not GatedDeltaNet(d_model=8, n_heads=2).runs_fla


# --- what fla is handed ---------------------------------------------------------------------------------------------

def twins(monkeypatch, **settings):
    """A layer that runs the stand-in where it would run fla, a kernel=torch layer with the same weights, the
    stand-in."""
    stand_in = force_fla(monkeypatch)
    torch.manual_seed(0)
    fla = GatedDeltaNet(**settings)
    reference = GatedDeltaNet(**{**settings, "kernel": "torch"})
    reference.load_state_dict(fla.state_dict())
    return fla, reference, stand_in


def test_what_fla_is_handed_is_the_reference_layer_in_float64(monkeypatch):
    """The raw projections and the kernel's flags (norm, sigmoid, gate) compute what the PyTorch form computes:
    outputs and the gradients of every parameter agree to float64 rounding (T = 70: two chunks)."""
    fla, reference, stand_in = twins(monkeypatch, d_model=12, n_heads=3)
    fla, reference = fla.double(), reference.double()
    x = torch.randn(2, 70, 12, dtype=torch.float64)
    y, _ = fla(x)
    y_ref, _ = reference(x)
    assert stand_in.calls == 1 and stand_in.dtypes == [torch.float64]
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_ref * weights).sum().backward()
    for (name, p), p_ref in zip(fla.named_parameters(), reference.parameters()):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=0, atol=1e-10, msg=name)


def test_under_bf16_autocast_fla_gets_one_dtype_and_contiguous_tensors(monkeypatch):
    """The stand-in asserts fla's contract (q, k, v, g, beta in one dtype, contiguous; the kernel's flags): the
    mixer's float32 decay next to autocast's bfloat16 projections is what failed to compile on the GPU."""
    fla, reference, stand_in = twins(monkeypatch, d_model=16, n_heads=2)
    x = torch.randn(2, 20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = fla(x)
        y_ref, _ = reference(x)
    assert stand_in.calls == 1 and stand_in.dtypes == [torch.bfloat16]
    # both compute the same operations in bfloat16 (8 significant bits: one rounding is <= 2^-8 = 0.004 of a value,
    # and the outputs are below 1), so they agree within a few roundings, 0.02, unless fla were handed something else
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=0, atol=2e-2)
    y.float().square().sum().backward()
    for name, p in fla.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_a_hybrid_lm_trains_through_fla_under_bf16_autocast(monkeypatch):
    stand_in = force_fla(monkeypatch)
    torch.manual_seed(0)
    net = HybridLM(12, 12, 16, layers=["gdn", "routed", "attn"], d_model=16, gdn=partial(GatedDeltaNet, n_heads=2),
                   attn=partial(SoftmaxAttention, n_heads=2), ffn=partial(GLUFFN, d_hidden=32, activation="silu"))
    tokens = torch.randint(0, 12, (3, 17))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(tokens[:, :-1]).logits
    F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
    assert stand_in.calls == 2 and stand_in.dtypes == [torch.bfloat16] * 2  # layer 0 and the routed layer's GDN
    decay = {name: p for name, p in net.named_parameters() if name.endswith(("A_log", "dt_bias"))}
    assert len(decay) == 4
    for name, p in decay.items():  # reached only through the kernel's gate
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name

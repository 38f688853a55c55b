"""flash-linear-attention's Triton kernel against the pure-PyTorch Gated DeltaNet (the reference): the same outputs,
final states and gradients on a CUDA device, in float32 and, through the layer, under bf16 autocast. Skipped without
a GPU, and where fla cannot run correctly (not installed; Hopper with a Triton fla refuses: nets/kernels/fla_choice.py), with
the reason the layer gives for kernel=fla."""
import pytest
import torch
import torch.nn.functional as F

from nets.kernels import fla_choice
from nets.kernels.fla_choice import fla_installed, fla_refusal
from nets.kernels.gated_delta import chunk_gated_delta_rule
from nets.parts.gated_deltanet import GatedDeltaNet

REFUSED = fla_refusal()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
runs_fla = pytest.mark.skipif(REFUSED is not None, reason=str(REFUSED))


def inputs(b=2, t=200, h=4, k=32, v=32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = F.normalize(torch.randn(b, t, h, k, device="cuda", generator=g), dim=-1)
    key = F.normalize(torch.randn(b, t, h, k, device="cuda", generator=g), dim=-1)
    value = torch.randn(b, t, h, v, device="cuda", generator=g)
    decay = F.logsigmoid(torch.randn(b, t, h, device="cuda", generator=g)) * 0.5
    beta = torch.rand(b, t, h, device="cuda", generator=g)
    return [x.requires_grad_() for x in (q, key, value, decay, beta)]


@runs_fla
def test_the_fla_kernel_gives_the_reference_outputs_states_and_gradients():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_rule

    tensors = inputs()
    state = torch.randn(2, 4, 32, 32, device="cuda") * 0.1
    ours, our_state = chunk_gated_delta_rule(*tensors, initial_state=state, output_final_state=True)
    theirs, their_state = fla_rule(*tensors, initial_state=state, output_final_state=True)
    torch.testing.assert_close(theirs, ours, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(their_state, our_state, rtol=2e-3, atol=2e-3)
    weights = torch.randn_like(ours)
    our_grads = torch.autograd.grad((ours * weights).sum(), tensors)
    their_grads = torch.autograd.grad((theirs * weights).sum(), tensors)
    for name, a, b in zip("q k v g beta".split(), their_grads, our_grads):
        torch.testing.assert_close(a, b, rtol=5e-3, atol=5e-3, msg=name)


def twin_layers():
    """kernel=auto (fla here) and kernel=torch uncompiled (the reference), with the same weights."""
    torch.manual_seed(0)
    fused = GatedDeltaNet(d_model=128, n_heads=4).cuda()
    reference = GatedDeltaNet(d_model=128, n_heads=4, kernel="torch", compile=False).cuda()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@runs_fla
def test_the_layer_picks_the_kernel_and_both_agree():
    fused, reference = twin_layers()
    x = torch.randn(2, 300, 128, device="cuda")
    assert fused.uses_fla(x) and not reference.uses_fla(x)
    torch.testing.assert_close(fused(x)[0], reference(x)[0], rtol=2e-3, atol=2e-3)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@runs_fla
def test_under_bf16_autocast_the_layer_runs_fla_as_close_to_float32_as_the_pytorch_form():
    """The contract fla's own layer keeps (one dtype, contiguous, norm/sigmoid/gate in the kernel) compiles and
    trains under bf16-mixed. Each kernel's bf16 output and parameter gradients are compared with the float32
    reference: fla's error may be at most twice the PyTorch form's plus 1e-2 (both round to bf16's 8 bits; fla
    accumulates in float32 too, so its error is of the same order)."""
    fused, reference = twin_layers()
    x = torch.randn(2, 300, 128, device="cuda")
    exact, _ = reference(x)
    exact_grads = torch.autograd.grad(exact.square().mean(), list(reference.parameters()))
    results = {}
    for name, layer in (("fla", fused), ("torch", reference)):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = layer(x)
        grads = torch.autograd.grad(y.float().square().mean(), list(layer.parameters()))
        results[name] = (relative_error(y, exact), [relative_error(g, e) for g, e in zip(grads, exact_grads)])
    (fla_out, fla_grads), (torch_out, torch_grads) = results["fla"], results["torch"]
    assert fla_out <= 2 * torch_out + 1e-2, results
    for (name, _), fla_err, torch_err in zip(fused.named_parameters(), fla_grads, torch_grads):
        assert fla_err <= 2 * torch_err + 1e-2, (name, fla_err, torch_err)


@pytest.mark.skipif(not fla_installed(), reason="needs flash-linear-attention (pip install -e '.[fla]')")
def test_fla_s_forward_takes_the_layer_s_inputs_in_float32_and_under_bf16(monkeypatch):
    """fla's forward under the contract the layer hands it (one dtype, contiguous, norm/sigmoid/gate in the kernel),
    also on a stack whose fla refuses its backward (Hopper with Triton < 3.7.1: the forward is not refused): float32
    agrees with the PyTorch form, and under bf16 autocast it compiles (the error that once stopped it was "Both
    operands must be same dtype") and is as close to float32 as the PyTorch form's bf16 run (twice its error plus
    1e-2, as the trained comparison above)."""
    monkeypatch.setattr(fla_choice, "fla_refusal", lambda: None)  # build a layer that runs fla here
    fused, reference = twin_layers()
    x = torch.randn(2, 300, 128, device="cuda")
    with torch.no_grad():
        exact, _ = reference(x)
        assert fused.uses_fla(x)
        torch.testing.assert_close(fused(x)[0], exact, rtol=2e-3, atol=2e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fla_bf16, torch_bf16 = fused(x)[0], reference(x)[0]
    assert fla_bf16.dtype == torch_bf16.dtype
    assert relative_error(fla_bf16, exact) <= 2 * relative_error(torch_bf16, exact) + 1e-2


def test_the_compiled_pytorch_form_gives_the_uncompiled_outputs_and_gradients():
    """Where fla cannot run, a CUDA run compiles the PyTorch chunked form (compile=auto): the outputs and every
    parameter's gradient of the uncompiled reference, over 300 positions (5 chunks, the last padded). Float32; the
    fused kernels only reorder sums, so they agree to rounding (2e-3 allows TF32 matmuls where they are on)."""
    torch.manual_seed(0)
    compiled = GatedDeltaNet(d_model=128, n_heads=4, kernel="torch").cuda()
    reference = GatedDeltaNet(d_model=128, n_heads=4, kernel="torch", compile=False).cuda()
    reference.load_state_dict(compiled.state_dict())
    x = torch.randn(2, 300, 128, device="cuda")
    assert compiled.compiles(x) and not reference.compiles(x)
    ours, theirs = compiled(x)[0], reference(x)[0]
    torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=2e-3)
    weights = torch.randn_like(ours)
    our_grads = torch.autograd.grad((ours * weights).sum(), list(compiled.parameters()))
    their_grads = torch.autograd.grad((theirs * weights).sum(), list(reference.parameters()))
    for (name, _), a, b in zip(compiled.named_parameters(), our_grads, their_grads):
        assert relative_error(a, b) < 2e-3, name

"""flash-linear-attention's Triton kernel against the pure-PyTorch Gated DeltaNet (the reference): the same outputs,
final states and gradients on a CUDA device. Skipped without a GPU or without the optional `fla` extra."""
import pytest
import torch
import torch.nn.functional as F

from nets.gated_delta import chunk_gated_delta_rule
from nets.gdn_mixer import GatedDeltaNet, fla_installed

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(not fla_installed(), reason="needs flash-linear-attention (pip install -e '.[fla]')")]


def inputs(b=2, t=200, h=4, k=32, v=32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = F.normalize(torch.randn(b, t, h, k, device="cuda", generator=g), dim=-1)
    key = F.normalize(torch.randn(b, t, h, k, device="cuda", generator=g), dim=-1)
    value = torch.randn(b, t, h, v, device="cuda", generator=g)
    decay = F.logsigmoid(torch.randn(b, t, h, device="cuda", generator=g)) * 0.5
    beta = torch.rand(b, t, h, device="cuda", generator=g)
    return [x.requires_grad_() for x in (q, key, value, decay, beta)]


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


def test_the_layer_picks_the_kernel_and_both_agree():
    torch.manual_seed(0)
    layer = GatedDeltaNet(d_model=128, n_heads=4).cuda()
    x = torch.randn(2, 300, 128, device="cuda")
    assert layer.uses_fla(x)
    fused, _ = layer(x)
    layer.kernel = "torch"
    assert not layer.uses_fla(x)
    reference, _ = layer(x)
    torch.testing.assert_close(fused, reference, rtol=2e-3, atol=2e-3)

"""A CPU stand-in for flash-linear-attention's `chunk_gated_delta_rule`, so that tests run the code up to fla's
boundary without CUDA.

`StandIn` checks what it is handed against what fla's own GatedDeltaNet layer hands the kernel (fla 0.6.0,
fla/layers/gated_deltanet.py): q, k (B, T, H, K) and v (B, T, H, V), the raw projections g and beta (B, T, H), all
contiguous and of one dtype (fla's Triton kernels fail to compile on mixed ones); the L2 norm of q and k, the sigmoid
of beta and the decay -exp(A_log) softplus(g + dt_bias) asked of the kernel, with A_log and dt_bias (H,). It
returns the reference result (nets/kernels/gated_delta.py) of what those flags mean. Like fla's, its autograd Function is
ctx-style (forward(ctx, ...) without setup_context: torch.func refuses it) and its backward is not differentiable.

`force_fla(monkeypatch)` makes layers built afterwards run it wherever they would run fla: the machine is one where
fla runs correctly, and CPU tensors (float64 too) are what fla takes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from nets.kernels import fla_choice
from nets.kernels.gated_delta import chunk_gated_delta_rule

# a machine where fla 0.6.0 runs correctly: a Hopper GPU with the Triton that has the fix
GOOD_MACHINE = fla_choice.MachineFacts(fla="0.6.0", cuda=True, device_name="NVIDIA H200", capability=(9, 0),
                                       triton="3.7.1")


def reference(q, k, v, g, beta, A_log, dt_bias):
    """fla's rule with use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel and use_gate_in_kernel, in the
    project's reference form (the decays in float32 at least, as fla computes them)."""
    acc = torch.promote_types(g.dtype, torch.float32)
    decay = -A_log.to(acc).exp() * F.softplus(g.to(acc) + dt_bias.to(acc))
    o, _ = chunk_gated_delta_rule(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, decay, beta.sigmoid(),
                                  chunk_size=min(64, q.shape[1]))
    return o


class CtxStyleFunction(torch.autograd.Function):
    """As fla's ChunkGatedDeltaRuleFunction: old-style forward(ctx, ...), a backward that is not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, A_log, dt_bias):
        ctx.save_for_backward(q, k, v, g, beta, A_log, dt_bias)
        return reference(q, k, v, g, beta, A_log, dt_bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        inputs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            o = reference(*inputs)
        return torch.autograd.grad(o, inputs, do)


class StandIn:
    """Called as fla's rule is; `calls` counts the calls, `dtypes` the dtype each call was handed."""

    def __init__(self):
        self.calls, self.dtypes = 0, []

    def __call__(self, q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                 use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, use_gate_in_kernel=False,
                 A_log=None, dt_bias=None, **others):
        self.calls += 1
        tensors = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
        dtypes = {name: t.dtype for name, t in tensors.items()}
        assert len(set(dtypes.values())) == 1, f"fla needs one dtype for q, k, v, g, beta; got {dtypes}"
        assert all(t.is_contiguous() for t in tensors.values()), \
            f"fla's layer hands contiguous tensors; contiguous: { {n: t.is_contiguous() for n, t in tensors.items()} }"
        B, T, H, K = q.shape
        assert k.shape == q.shape and v.shape[:3] == (B, T, H), (q.shape, k.shape, v.shape)
        assert g.shape == beta.shape == (B, T, H), f"raw g and beta (B, T, H); got {g.shape}, {beta.shape}"
        assert use_qk_l2norm_in_kernel and use_beta_sigmoid_in_kernel and use_gate_in_kernel, \
            "fla's layer asks the kernel for the q/k norm, the beta sigmoid and the gate"
        assert A_log is not None and dt_bias is not None and A_log.shape == dt_bias.shape == (H,)
        assert scale is None and initial_state is None and not output_final_state and not others, others
        self.dtypes.append(q.dtype)
        return CtxStyleFunction.apply(q, k, v, g, beta, A_log, dt_bias), None


def force_fla(monkeypatch) -> StandIn:
    """Layers built after this run a new `StandIn` wherever they would run fla; returns it."""
    stand_in = StandIn()
    monkeypatch.setattr(fla_choice, "machine_facts", lambda: GOOD_MACHINE)
    monkeypatch.setattr(fla_choice, "FLA_DEVICE", "cpu")
    # fla has no float64 kernels; the stand-in computes in any dtype, so equivalence tests can compare in float64
    monkeypatch.setattr(fla_choice, "FLA_DTYPES", (*fla_choice.FLA_DTYPES, torch.float64))
    monkeypatch.setattr(fla_choice, "fla_chunk_rule", lambda: stand_in)
    return stand_in

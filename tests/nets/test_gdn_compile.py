"""Gated DeltaNet's PyTorch chunked form under torch.compile (nets/kernels/gated_delta.py,
`compiled_chunk_gated_delta_rule`; what a GPU runs where flash-linear-attention's kernel cannot): the recurrent
reference's outputs and gradients, one compiled graph per number of chunks and not one per step or length, and the
places where the uncompiled form runs instead. torch.compile works on a CPU, so all of it is tested here."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from core.errors import ConfigError
from nets.kernels import gated_delta
from nets.kernels.fla_choice import reference_form
from nets.parts.gated_deltanet import GatedDeltaNet

pytestmark = pytest.mark.usefixtures("one_thread")


def twins(chunk_size=4, **settings):
    """A layer compiled (compile=true) and the recurrent reference, with the same weights, in float64."""
    torch.manual_seed(0)
    compiled = GatedDeltaNet(d_model=8, n_heads=2, chunk_size=chunk_size, compile=True, **settings).double()
    reference = GatedDeltaNet(d_model=8, n_heads=2, chunk_size=chunk_size, mode="recurrent").double()
    reference.load_state_dict(compiled.state_dict())
    return compiled, reference


@pytest.mark.usefixtures("compile_cache_of_this_kernel_set")
def test_the_compiled_form_gives_the_recurrent_references_outputs_and_gradients():
    """Inductor, the backend a GPU runs, compiling for the CPU: 7 positions in chunks of 4 (two chunks, the last one
    padded before the compiled code). Float64: the forms agree to rounding, 1e-10."""
    compiled, reference = twins()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    assert compiled.compiles(x) and not reference.compiles(x)
    ours, theirs = compiled(x)[0], reference(x)[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    weights = torch.randn_like(ours)
    our_grads = torch.autograd.grad((ours * weights).sum(), list(compiled.parameters()))
    their_grads = torch.autograd.grad((theirs * weights).sum(), list(reference.parameters()))
    for (name, _), a, b in zip(compiled.named_parameters(), our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m: f"d/d{name}: {m}")


@pytest.fixture
def counted_compiles(monkeypatch):
    """The compiled form's backend replaced by one that compiles nothing but counts the graphs it is handed (torch
    .compile's guards, and so its recompiles, do not depend on the backend); dynamo's caches emptied before and
    after, so that compiles of other tests neither count here nor use up the recompile limit."""
    graphs = CompileCounter()
    monkeypatch.setattr(gated_delta, "COMPILE_BACKEND", graphs)
    torch._dynamo.reset()
    yield graphs
    torch._dynamo.reset()


def test_one_graph_per_number_of_chunks_not_one_per_step_or_length(counted_compiles):
    """Training steps of one shape compile once; shorter lengths of as many chunks (9, 13 of chunks of 16) reuse
    the graph (they are padded before it); a second batch size compiles once more and makes the batch size
    symbolic, so further ones compile nothing; two chunks are one graph more, whatever the length and batch."""
    torch.manual_seed(0)
    layer = GatedDeltaNet(d_model=8, n_heads=2, chunk_size=16, compile=True)

    def steps(batch, *lengths):
        for length in lengths:
            layer(torch.randn(batch, length, 8))[0].square().sum().backward()

    steps(2, 16, 16, 16, 9, 13)
    assert counted_compiles.frame_count == 1
    steps(3, 16, 16)
    steps(5, 16, 11)
    assert counted_compiles.frame_count == 2
    steps(2, 32, 20, 17)
    steps(4, 30)
    assert counted_compiles.frame_count == 3
    with torch.no_grad():  # evaluation: no graph for the backward, so one compile more, then none
        for batch in (2, 3, 7):
            layer(torch.randn(batch, 16, 8))
    assert counted_compiles.frame_count == 4


def test_where_the_uncompiled_form_runs(counted_compiles):
    """compile=auto compiles CUDA inputs only, so not these; true compiles them; false and mode=recurrent never.
    Under torch.func transforms (ensembles) and inside reference_form() (Hessian-vector products: compiled code has
    no double backward) the uncompiled form runs whatever the setting, and inside an enclosing torch.compile the
    outer graph traces it (one graph, no break)."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    layers = {setting: GatedDeltaNet(d_model=8, n_heads=2, compile=setting) for setting in ("auto", True, False)}
    assert [layer.compiles(x) for layer in layers.values()] == [False, True, False]
    assert not GatedDeltaNet(d_model=8, n_heads=2, compile=True, mode="recurrent").compiles(x)
    layer = layers[True]
    seen = []

    def record(x_row):
        seen.append(layer.compiles(x_row))
        return layer(x_row)[0]

    torch.func.vmap(record)(x.unsqueeze(1))
    with reference_form():
        seen.append(layer.compiles(x))
        w = [p for p in layer.parameters()]
        grads = torch.autograd.grad(layer(x)[0].square().sum(), w, create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), w, allow_unused=True)
    assert seen == [False, False] and any(g is not None and g.abs().sum() > 0 for g in second)
    assert counted_compiles.frame_count == 0
    outer = CompileCounter()
    with reference_form():
        uncompiled = layer(x)[0]
    torch.testing.assert_close(torch.compile(layer, backend=outer, fullgraph=True)(x)[0], uncompiled)
    assert outer.frame_count == 1 and counted_compiles.frame_count == 0


def test_the_setting_is_checked_and_named_in_the_kernel_line():
    from nets.kernels.fla_choice import fla_refusal
    from nets.parts.gated_deltanet import kernel_in_use

    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError) as info:
            GatedDeltaNet(d_model=8, n_heads=2, compile=bad)
        assert info.value.key == "compile" and "auto (compiled on CUDA), true or false" in str(info.value)
    why = fla_refusal() or "the run is on cpu"
    assert kernel_in_use(GatedDeltaNet(d_model=8, n_heads=2, compile=True), "cpu") == f"torch, compiled ({why})"
    assert kernel_in_use(GatedDeltaNet(d_model=8, n_heads=2), "cpu") == f"torch ({why})"
    assert kernel_in_use(GatedDeltaNet(d_model=8, n_heads=2, compile=False, kernel="torch"), "cuda") == \
        "torch (kernel=torch)"

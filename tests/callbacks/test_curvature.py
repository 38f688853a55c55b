"""Curvature: Hessian-vector products, Hutchinson's trace and power iteration against exact Hessians (a known
quadratic, a tiny net through torch.autograd.functional.hessian), the empirical Fisher trace against its closed
form on a linear-softmax model, the callback on a real module, and real runs through the launcher (with resume)."""
import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from callbacks.diagnostics.curvature import (Curvature, fisher_trace, hutchinson_trace, hvp_operator, jacobian_norm,
                                             top_eigenvalue)
from core.errors import ConfigError
from datamodules.batch import Batch, TaskSpec
from lightning_modules import TaskModule
from lightning_modules.answers import task_loss
from lightning_modules.optimization import AdamWRecipe
from nets import MLP, MLPFFN, GatedDeltaNet, Transformer
from tests.conftest import metrics_rows
from tests.fla_stand_in import force_fla

pytestmark = pytest.mark.usefixtures("one_thread")


def symmetric_with_eigenvalues(eigenvalues, seed=0):
    """Q diag(λ) Qᵀ with a random orthogonal Q (float64)."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def quadratic(a):
    """0.5 zᵀAz with z split over two parameter tensors of shapes (2,) and (2, 2): the Hessian is A."""
    x1 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def loss_fn():
        z = torch.cat([x1, x2.flatten()])
        return 0.5 * z @ a @ z

    return loss_fn, [x1, x2]


def hutchinson_std(h, n_samples):
    """Standard deviation of the Rademacher Hutchinson mean: one probe's variance is 2·Σ_{i≠j} H_ij²."""
    off_diagonal = (h**2).sum() - (torch.diagonal(h) ** 2).sum()
    return math.sqrt(2 * float(off_diagonal) / n_samples)


A = symmetric_with_eigenvalues([5.0, -2.0, 1.5, 1.0, 0.5, 0.1])


def test_hvp_of_a_quadratic_is_a_times_v():
    loss_fn, params = quadratic(A)
    grads, hvp = hvp_operator(loss_fn, params)
    z = torch.cat([p.detach().flatten() for p in params])
    assert torch.allclose(torch.cat([g.flatten() for g in grads]), A @ z)
    v = [torch.randn_like(p) for p in params]
    hv = torch.cat([x.flatten() for x in hvp(v)])
    assert torch.allclose(hv, A @ torch.cat([x.flatten() for x in v]), atol=1e-12)
    assert all(p.grad is None for p in params)  # nothing written to .grad


def test_hutchinson_on_a_quadratic_is_within_its_standard_error():
    loss_fn, params = quadratic(A)
    n = 4000
    estimate = hutchinson_trace(loss_fn, params, n, torch.Generator().manual_seed(1))
    exact = float(torch.trace(A))  # 6.1
    std = hutchinson_std(A, n)  # ≈ 0.07
    assert 0.01 < std < 0.2
    assert abs(estimate - exact) < 4 * std
    assert estimate != pytest.approx(exact, abs=1e-9)  # it is an estimate, not the diagonal read off


def test_hutchinson_is_exact_for_a_diagonal_hessian_and_reproducible_without_touching_the_global_rng():
    d = torch.diag(torch.tensor([3.0, -1.0, 0.25, 2.0, 7.0, 0.5], dtype=torch.float64))
    loss_fn, params = quadratic(d)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    assert hutchinson_trace(loss_fn, params, 1) == pytest.approx(11.75, abs=1e-12)  # vᵀDv = Σ D_ii for v = ±1
    assert torch.equal(torch.rand(1), expected_next)
    loss_fn, params = quadratic(A)
    first = hutchinson_trace(loss_fn, params, 8, torch.Generator().manual_seed(5))
    assert hutchinson_trace(loss_fn, params, 8, torch.Generator().manual_seed(5)) == first


@pytest.mark.parametrize("eigenvalues, top", [([5.0, -2.0, 1.5, 1.0, 0.5, 0.1], 5.0),
                                              ([-6.0, 3.0, 1.0, 0.5, -0.2, 0.1], -6.0)])
def test_power_iteration_finds_the_largest_magnitude_eigenvalue_with_its_sign(eigenvalues, top):
    loss_fn, params = quadratic(symmetric_with_eigenvalues(eigenvalues, seed=2))
    assert top_eigenvalue(loss_fn, params, iters=500, tol=1e-10) == pytest.approx(top, abs=1e-4)


def test_power_iteration_stops_when_the_estimate_changes_less_than_tol():
    loss_fn, params = quadratic(A)
    # a tolerance nothing fails stops at the second product: the same as two iterations without a tolerance
    two = top_eigenvalue(loss_fn, params, iters=2, tol=0.0)
    assert top_eigenvalue(loss_fn, params, iters=10_000, tol=1e30) == two
    assert two != pytest.approx(5.0, abs=1e-2)  # two products are not enough: the stop did cut it short
    assert top_eigenvalue(loss_fn, params, iters=10_000, tol=1e-9) == pytest.approx(5.0, abs=1e-6)


def test_a_loss_linear_in_its_parameters_has_zero_curvature():
    w = torch.randn(4, requires_grad=True)
    loss_fn = lambda: (w * torch.arange(4.0)).sum()  # noqa: E731
    assert hutchinson_trace(loss_fn, [w], 3) == 0.0
    assert top_eigenvalue(loss_fn, [w]) == 0.0


# --- a tiny net against torch.autograd.functional.hessian --------------------------------------------------------

def tiny_net_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    params = list(net.parameters())
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in params]

    def loss_fn():
        return F.cross_entropy(net(x), y)

    def flat_loss(flat):
        chunks = torch.split(flat, [s.numel() for s in shapes])
        values = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return F.cross_entropy(torch.func.functional_call(net, values, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in params])
    hessian = torch.autograd.functional.hessian(flat_loss, flat)  # (31, 31)
    return loss_fn, params, hessian


def test_hvp_on_a_tiny_net_matches_the_exact_hessian():
    loss_fn, params, h = tiny_net_problem()
    _, hvp = hvp_operator(loss_fn, params)
    v = [torch.randn_like(p) for p in params]
    hv = torch.cat([x.flatten() for x in hvp(v)])
    assert torch.allclose(hv, h @ torch.cat([x.flatten() for x in v]), atol=1e-10)


def test_hutchinson_and_power_iteration_on_a_tiny_net_match_the_exact_hessian():
    loss_fn, params, h = tiny_net_problem()
    n = 1000
    estimate = hutchinson_trace(loss_fn, params, n, torch.Generator().manual_seed(0))
    exact, std = float(torch.trace(h)), hutchinson_std(h, n)  # ≈ 1.99 and 0.1
    assert 4 * std < 0.25 * exact
    assert abs(estimate - exact) < 4 * std
    eigenvalues = torch.linalg.eigvalsh(h)
    top = float(eigenvalues[eigenvalues.abs().argmax()])
    second = float(eigenvalues.abs().sort().values[-2])
    assert second / abs(top) < 0.95  # 0.95^(2·2000): power iteration closes this gap in the iterations below
    assert top_eigenvalue(loss_fn, params, iters=2000, tol=1e-10) == pytest.approx(top, abs=1e-4)


# --- the empirical Fisher -----------------------------------------------------------------------------------------

def linear_softmax_logits(params, x):
    return x @ params["weight"].T + params["bias"]  # (N, C)


def test_fisher_trace_of_a_linear_softmax_model_matches_its_closed_form():
    # ∇_W log p(y|x) = (e_y - s) xᵀ and ∇_b = e_y - s:
    # the per-example squared norm is ||e_y - s||² (||x||² + 1)
    g = torch.Generator().manual_seed(0)
    n, d, c = 10, 5, 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    params = {"weight": torch.randn(c, d, generator=g, dtype=torch.float64),
              "bias": torch.randn(c, generator=g, dtype=torch.float64)}
    s = torch.softmax(linear_softmax_logits(params, x), -1)
    residual = F.one_hot(y, c).double() - s
    closed_form = float(((residual**2).sum(1) * ((x**2).sum(1) + 1)).mean())
    assert fisher_trace(linear_softmax_logits, params, x, y, chunk_size=3) == pytest.approx(closed_form, rel=1e-12)


def test_fisher_trace_at_zero_weights_is_c_minus_1_over_c_times_mean_input_norm():
    # W = 0, b = 0: s is uniform, ||e_y - s||² = (1 - 1/C)² + (C - 1)/C² = (C - 1)/C whatever the label
    x = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]], dtype=torch.float64)  # ||x||² + 1 = 3, 5, 10
    y = torch.tensor([0, 3, 1])
    params = {"weight": torch.zeros(4, 2, dtype=torch.float64), "bias": torch.zeros(4, dtype=torch.float64)}
    assert fisher_trace(linear_softmax_logits, params, x, y) == pytest.approx(0.75 * 6.0, rel=1e-12)


def test_fisher_uses_the_true_labels():
    x = torch.eye(2, dtype=torch.float64)
    params = {"weight": torch.tensor([[4.0, 0.0], [0.0, 4.0]], dtype=torch.float64),
              "bias": torch.zeros(2, dtype=torch.float64)}
    right = fisher_trace(linear_softmax_logits, params, x, torch.tensor([0, 1]))
    wrong = fisher_trace(linear_softmax_logits, params, x, torch.tensor([1, 0]))
    s = 1 / (1 + math.exp(-4))  # the confident class's probability
    assert right == pytest.approx(2 * (1 - s) ** 2 * 2, rel=1e-10)  # ||e - s||² = 2(1-s)², ||x||² + 1 = 2
    assert wrong == pytest.approx(2 * s**2 * 2, rel=1e-10)


# --- the callback on a real module ----------------------------------------------------------------------------------

P = 5


def tiny_module():
    torch.manual_seed(0)
    spec = TaskSpec(num_classes=P, in_features=2 * P, input_kind="onehot")
    module = TaskModule(MLP(2 * P, P, hidden_dim=6, n_hidden=1), spec, AdamWRecipe()).double()
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    a, b = a.flatten(), b.flatten()
    inputs = torch.cat([F.one_hot(a, P), F.one_hot(b, P)], 1).double()
    targets = ((a + b) % P)[:, None]
    batch = Batch(inputs, targets, torch.ones_like(targets, dtype=torch.float64),
                  torch.ones_like(targets, dtype=torch.bool), torch.zeros_like(a))
    return module, batch


def exact_task_hessian(module, batch):
    named = dict(module.net.named_parameters())
    shapes = {n: p.shape for n, p in named.items()}

    def flat_loss(flat):
        chunks = torch.split(flat, [s.numel() for s in shapes.values()])
        values = {n: c.view(s) for (n, s), c in zip(shapes.items(), chunks)}
        output = torch.func.functional_call(module.net, values, (batch.inputs,))
        return task_loss(output, batch)[0]

    return torch.autograd.functional.hessian(flat_loss, torch.cat([p.detach().flatten() for p in named.values()]))


def test_the_callback_measures_the_task_loss_and_leaves_grads_mode_and_rng_alone():
    module, batch = tiny_module()
    module.train()
    sentinels = [torch.full_like(p, 7.0) for p in module.net.parameters()]
    for p, s in zip(module.net.parameters(), sentinels):
        p.grad = s.clone()
    callback = Curvature(n_probes=400, power_iters=3000, power_tol=1e-10, fisher_chunk_size=7)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    values = callback.compute(module, batch)
    assert torch.equal(torch.rand(1), expected_next)
    assert module.training
    assert all(torch.equal(p.grad, s) for p, s in zip(module.net.parameters(), sentinels))
    module.eval()
    callback.compute(module, batch)
    assert not module.training

    params = list(module.net.parameters())
    loss = task_loss(module.net(batch.inputs), batch)[0]
    grads = torch.autograd.grad(loss, params)
    assert values["grad_norm"] == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in grads))), rel=1e-10)

    h = exact_task_hessian(module, batch)  # (101, 101)
    assert abs(values["hessian_trace"] - float(torch.trace(h))) < 4 * hutchinson_std(h, 400)
    eigenvalues = torch.linalg.eigvalsh(h)
    assert values["top_eigenvalue"] == pytest.approx(float(eigenvalues[eigenvalues.abs().argmax()]), rel=1e-3)

    per_example = []  # the empirical Fisher by a plain loop over examples
    for i in range(len(batch.inputs)):
        nll = F.cross_entropy(module.net(batch.inputs[i:i + 1]).logits, batch.targets[i])
        per_example.append(sum((g**2).sum() for g in torch.autograd.grad(nll, params)))
    assert values["fisher_trace"] == pytest.approx(float(torch.stack(per_example).mean()), rel=1e-10)


def test_a_gdn_net_is_measured_in_the_pytorch_form(monkeypatch, one_thread):
    """fla's backward is not differentiable (Hessian products would lose GDN's second-order terms) and torch.func
    refuses its ctx-style Function (the Fisher's vmap of grad). With a stand-in for fla forced on (ctx-style,
    once-differentiable), the four numbers of a GDN net never enter it and are those of the same net with
    kernel=torch (float64, the same operations: equal to rounding)."""
    stand_in = force_fla(monkeypatch)
    spec = TaskSpec(num_classes=P, vocab_size=P + 1, seq_len=3)

    def gdn_module(kernel):
        torch.manual_seed(0)
        net = Transformer(P + 1, P, 3, n_layers=1, d_model=8, mixer=partial(GatedDeltaNet, n_heads=2, kernel=kernel),
                          ffn=MLPFFN)
        return TaskModule(net, spec, AdamWRecipe()).double()

    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    inputs = torch.stack([a.flatten(), b.flatten(), torch.full((P * P,), P)], 1)
    targets = ((a + b) % P).flatten()[:, None]
    batch = Batch(inputs, targets, torch.ones_like(targets, dtype=torch.float64),
                  torch.ones_like(targets, dtype=torch.bool), torch.zeros(P * P, dtype=torch.long))
    measured = gdn_module("auto")
    measured.net(inputs)
    assert stand_in.calls == 1  # a plain forward of this net runs it
    callback = Curvature(n_probes=3, power_iters=5, fisher_chunk_size=7)
    values = callback.compute(measured, batch)
    assert stand_in.calls == 1
    assert values == pytest.approx(callback.compute(gdn_module("torch"), batch), rel=1e-9)
    assert values["hessian_trace"] != 0 and values["fisher_trace"] > 0


def test_the_callback_reads_the_task_s_training_examples_and_logs_under_curvature():
    module, batch = tiny_module()
    examples = lambda split, n: Batch(*(t[:n] for t in {"train": batch}[split]))  # noqa: E731
    trainer = SimpleNamespace(datamodule=SimpleNamespace(examples=examples), global_step=30)
    callback = Curvature(subset_size=10, n_probes=2, power_iters=5)
    subset = callback.subset(trainer)
    assert torch.equal(subset.inputs, batch.inputs[:10]) and torch.equal(subset.targets, batch.targets[:10])
    metrics = callback.measure(trainer, module)
    assert set(metrics) == {"curvature/grad_norm", "curvature/hessian_trace", "curvature/top_eigenvalue",
                            "curvature/fisher_trace", "curvature/jacobian_norm"}
    assert callback.history == [{"step": 30, **{k.split("/")[1]: v for k, v in metrics.items()}}]
    assert metrics == {f"curvature/{k}": v for k, v in callback.compute(module, subset, 30).items()}  # seeded


class OneHotLinear(nn.Module):
    """logits = W x + b: its input-output Jacobian is W for every input (closed form ||W||_F)."""
    input_kind = "onehot"

    def __init__(self, w):
        super().__init__()
        self.linear = nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            self.linear.weight.copy_(w)

    def forward(self, x):
        return SimpleNamespace(logits=self.linear(x))


def test_jacobian_norm_of_a_linear_one_hot_net_is_the_weights_frobenius_norm():
    w = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 2.0]], dtype=torch.float64)  # ||W||_F = sqrt(1 + 4 + 0.25 + 4)
    x = F.one_hot(torch.tensor([0, 2, 1]), 3).double()
    assert jacobian_norm(OneHotLinear(w), x, 1) == pytest.approx(math.sqrt(9.25), rel=1e-12)


def test_jacobian_norm_of_an_mlp_is_the_mean_of_each_examples_exact_jacobian():
    module, batch = tiny_module()
    module.eval()
    net = module.net
    norms = [torch.linalg.norm(torch.autograd.functional.jacobian(lambda x: net(x[None]).logits[0], x))
             for x in batch.inputs]  # (classes, 2p) each, one example at a time
    assert jacobian_norm(net, batch.inputs, 1) == pytest.approx(float(torch.stack(norms).mean()), rel=1e-10)
    assert Curvature().compute(module, batch)["jacobian_norm"] == pytest.approx(float(torch.stack(norms).mean()),
                                                                                rel=1e-10)
    assert "jacobian_norm" not in Curvature(jacobian=False).compute(module, batch)


def test_jacobian_norm_of_a_transformer_is_by_its_token_embedding_as_central_differences_give_it():
    """Central differences of the answer logits in each coordinate of the token embedding output (float64, step
    1e-5: the truncation error is O(step^2 * third derivative) ~ 1e-10, far inside rel 1e-6)."""
    torch.manual_seed(0)
    net = Transformer(P + 1, P, 3, n_layers=1, d_model=8, init_std=0.5).double().eval()
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((P * P,), P)], 1)
    step, columns = 1e-5, []

    def logits_with(shift):
        handle = net.token_embedding.register_forward_hook(lambda m, args, out: out + shift)
        try:
            with torch.no_grad():
                return net(tokens).logits[:, -1]
        finally:
            handle.remove()

    for position in range(3):
        for dim in range(8):
            shift = torch.zeros(1, 3, 8, dtype=torch.float64)
            shift[0, position, dim] = step
            columns.append((logits_with(shift) - logits_with(-shift)) / (2 * step))  # (N, classes): one column each
    by_differences = torch.stack(columns, -1).flatten(1).norm(dim=1).mean()
    assert jacobian_norm(net, tokens, 1) == pytest.approx(float(by_differences), rel=1e-6)
    assert float(by_differences) > 0.1  # the attention and FFN make it more than a constant


def test_jacobian_norm_is_none_for_a_net_without_a_readable_input():
    net = nn.Linear(3, 2)
    assert jacobian_norm(net, torch.zeros(1, 3), 1) is None


@pytest.mark.parametrize("kwargs, key", [({"subset_size": 0}, "subset_size"), ({"n_probes": 0}, "n_probes"),
                                         ({"power_iters": 0}, "power_iters"), ({"every_n_steps": 0}, "every_n_steps"),
                                         ({"fisher_chunk_size": 0}, "fisher_chunk_size")])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"{key}=0"):
        Curvature(**kwargs)


# --- real runs through the launcher -----------------------------------------------------------------------------

CURVATURE = ("+callbacks.curvature={_target_: callbacks.diagnostics.curvature.Curvature, every_n_steps: 20, n_probes: 4,"
             " power_iters: 20}")


def test_a_run_logs_curvature_draws_it_keeps_its_history_through_resume_and_is_not_perturbed(run_config):
    common = ["threads=1", "callbacks.checkpoint.every_n_train_steps=10"]
    plain, _ = run_config(common, name="plain")
    common.append(CURVATURE)
    _, first = run_config([*common, "trainer.max_steps=20"], name="first")
    resumed, run_dir = run_config([*common, f"ckpt_path={first}/checkpoints/last.ckpt"], name="resumed")

    assert (first / "plots" / "curvature_history.png").is_file()
    assert (run_dir / "plots" / "curvature_history.png").is_file()
    names = ("grad_norm", "hessian_trace", "top_eigenvalue", "fisher_trace")
    logged = {int(r["step"]): r for r in metrics_rows(first) + metrics_rows(run_dir)
                 if r.get("curvature/grad_norm")}
    assert sorted(logged) == [0, 19, 39]  # initialisation, after steps 20 and 40 (rows are steps done - 1)
    for row in logged.values():
        assert all(math.isfinite(float(row[f"curvature/{n}"])) for n in names)
        assert float(row["curvature/grad_norm"]) > 0 and float(row["curvature/fisher_trace"]) > 0

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "Curvature" in k]
    assert [h["step"] for h in state["history"]] == [0, 20, 40]  # the first run's points came through the resume
    assert state["history"][2]["grad_norm"] == pytest.approx(float(logged[39]["curvature/grad_norm"]), rel=1e-6)

    # measuring does not change training: the same final numbers as a run without the callback
    for key, value in plain["final"].items():
        assert resumed["final"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_the_figure_draws_negative_values_as_magnitudes(tmp_path, drawn_figures):
    import callbacks.diagnostics.curvature

    figures = drawn_figures(callbacks.diagnostics.curvature)
    callback = Curvature()
    callback.history = [{"step": s, "grad_norm": 0.1, "hessian_trace": -3.0 + s, "top_eigenvalue": -2.0,
                         "fisher_trace": 1.0} for s in (0, 10)]
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), loggers=[], global_step=10)
    callback.plot(trainer, None)
    assert (tmp_path / "plots" / "curvature_history.png").stat().st_size > 1000
    (ax,) = figures["curvature/history"].axes
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines == {"grad norm": ([0, 10], [0.1, 0.1]), "|hessian trace|": ([0, 10], [3.0, 7.0]),
                     "|top eigenvalue|": ([0, 10], [2.0, 2.0]), "fisher trace": ([0, 10], [1.0, 1.0])}
    (marks,) = ax.collections  # the negative values, marked where their magnitude is drawn
    assert marks.get_label() == "negative value"
    assert sorted(map(tuple, marks.get_offsets().tolist())) == [(0.0, 2.0), (0.0, 3.0), (10.0, 2.0)]

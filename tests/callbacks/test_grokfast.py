"""Grokfast gradient filters: closed forms of the EMA and MA filters, the clip acting on the raw gradient before
the filter, exact checkpoint round trips, the paper's regime as composed, and real runs through the launcher
(including resume)."""
import io
import math
import statistics
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from callbacks.interventions.grokfast import GradientWindow, Grokfast, ema_filter, ma_filter
from core.errors import ConfigError
from tests.conftest import assert_resume_ends_as_straight_run

G = torch.tensor([0.5, -2.0, 3.0])


def run_ema(grads, alpha, lamb, h0):
    outputs, h = [], h0
    for g in grads:
        out, h = ema_filter(g, h, alpha, lamb)
        outputs.append(out)
    return outputs, h


def test_ema_on_a_constant_gradient_from_zero_follows_the_closed_form_and_tends_to_1_plus_lambda():
    # from h_0 = 0: h_n = (1-α) Σ_{k<n} α^k g = (1 - α^n) g, so ĝ_n = g·(1 + λ(1 - α^n))
    alpha, lamb = 0.98, 2.0
    outputs, h = run_ema([G] * 500, alpha, lamb, torch.zeros(3))
    for n in (1, 2, 10, 100, 500):
        assert torch.allclose(outputs[n - 1], G * (1 + lamb * (1 - alpha**n)), rtol=1e-5), n
    assert torch.allclose(outputs[0], G * (1 + lamb * 0.02), rtol=1e-6)  # 1.04 g: the EMA starts almost empty
    assert torch.allclose(outputs[-1], (1 + lamb) * G, rtol=1e-4)  # α^500 ≈ 4e-5
    assert torch.allclose(h, (1 - alpha**500) * G, rtol=1e-5)


def test_ema_on_alternating_gradients_barely_amplifies_them():
    # g_n = (-1)^(n+1) g (starting at +g), h_0 = 0:
    #   h_n = (1-α) Σ_{k=1..n} α^(n-k) (-1)^(k+1) g = (-1)^(n+1) g · (1-α)(1 - (-α)^n)/(1+α)
    # h carries the sign of the current gradient, so ĝ_n = g_n · (1 + λ(1-α)(1 - (-α)^n)/(1+α))
    # -> g_n · (1 + λ(1-α)/(1+α)) = 1.0202 g_n for α = 0.98, λ = 2, against 3 g for a constant gradient.
    alpha, lamb = 0.98, 2.0
    grads = [G * (-1) ** k for k in range(400)]
    outputs, h = run_ema(grads, alpha, lamb, torch.zeros(3))
    for n in (1, 2, 3, 50, 400):
        gain = 1 + lamb * (1 - alpha) * (1 - (-alpha) ** n) / (1 + alpha)
        assert torch.allclose(outputs[n - 1], grads[n - 1] * gain, rtol=1e-5), n
    assert torch.allclose(outputs[-1], grads[-1] * (1 + lamb * 0.02 / 1.98), rtol=1e-4)
    assert torch.allclose(h, -G * 0.02 * (1 - alpha**400) / 1.98, rtol=1e-5)  # the 400th gradient is -g


def test_ema_started_from_the_first_gradient_is_at_1_plus_lambda_at_once():
    # the reference code's start: h_0 = g_1, so h stays g and ĝ_n = (1+λ) g from the first step
    cb = Grokfast(filter="ema")
    for _ in range(3):
        assert torch.allclose(cb.filter_gradient("w", G.clone()), 3.0 * G)
    assert cb.lamb == 2.0 and cb.alpha == 0.98  # the paper's defaults


def test_filters_leave_their_inputs_untouched():
    # the MA window is a ring written in place (its state); the gradient itself is never touched
    g, h, window = G.clone(), torch.ones(3), GradientWindow(G, 3)
    ema_filter(g, h, 0.9, 2.0)
    ma_filter(g, window, 5.0)
    assert torch.equal(g, G) and torch.equal(h, torch.ones(3))


def test_ma_on_a_constant_gradient_waits_for_a_full_window_then_gives_1_plus_lambda():
    w, lamb = 5, 5.0
    window, outputs = GradientWindow(G, w), []
    for _ in range(8):
        outputs.append(ma_filter(G, window, lamb, warmup=True))
    for out in outputs[: w - 1]:
        assert torch.equal(out, G)  # warm-up: unfiltered
    for out in outputs[w - 1 :]:
        assert torch.allclose(out, (1 + lamb) * G, rtol=1e-6)  # 6 g
    assert window.rows.shape == (w, 3)


def test_ma_averages_exactly_the_last_w_raw_gradients():
    w, lamb = 4, 5.0
    grads = [torch.full((2,), float(k)) for k in range(1, 10)]  # 1, 2, ..., 9
    window, outputs = GradientWindow(grads[0], w), []
    for g in grads:
        outputs.append(ma_filter(g, window, lamb, warmup=False))
    # step n: mean of the last min(n, w) values of 1..n
    assert outputs[0].tolist() == [1 + 5 * 1.0] * 2
    assert outputs[1].tolist() == [2 + 5 * 1.5] * 2
    assert outputs[8].tolist() == [9 + 5 * 7.5] * 2  # mean(6, 7, 8, 9)
    # an even window over alternating ±g averages to 0: the fast component is not amplified at all
    window = GradientWindow(G, 4)
    for k in range(6):
        out = ma_filter(G * (-1) ** k, window, lamb)
    assert torch.allclose(out, -G)


def test_the_ring_window_gives_the_mean_of_the_last_w_gradients_to_float_rounding():
    # the earlier filter concatenated the whole window and averaged it every step; the ring keeps a running sum.
    # Reference: the mean of the last w raw gradients in float64. Margin: between two recomputations the sum takes
    # at most w additions of (new - oldest), each rounded at float32's 6e-8 of the sum's size, so the error in the
    # mean stays below 1e-5 of the largest gradient for w = 7 on any kernel set.
    w, lamb = 7, 5.0
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen) * 10 ** torch.randint(-2, 3, (5,), generator=gen) for _ in range(300)]
    window = GradientWindow(grads[0], w)
    for n, g in enumerate(grads, start=1):
        out = ma_filter(g, window, lamb, warmup=False)
        mean = torch.stack(grads[max(n - w, 0):n]).double().mean(0)
        scale = torch.stack(grads[max(n - w, 0):n]).abs().max().item()
        assert (out.double() - (g.double() + lamb * mean)).abs().max() <= 1e-5 * lamb * scale, n


def test_the_running_sum_is_recomputed_so_a_large_gradient_leaves_no_residue():
    # w huge gradients, then small ones: a sum that only ever added and subtracted would keep a residue of the
    # huge ones' rounding (1e7 at float32 rounds in steps of 1) long after they left the window
    w = 4
    window = GradientWindow(torch.zeros(1), w)
    for big in (1e7 + 1, -3e7 + 3, 2e7 + 1, 5e7 + 7):
        window.push(torch.tensor([big]))
    for _ in range(2 * w):
        window.push(torch.tensor([0.1]))
    assert window.mean().item() == pytest.approx(0.1, rel=1e-6)


def test_an_ma_step_writes_a_few_copies_of_the_parameter_not_the_whole_window():
    # the earlier filter concatenated the window with the new gradient every step (w + 1 copies written, then
    # averaged); the ring writes one row and moves its sum. Counted: elements written by every op of a step (an
    # out-of-place op's outputs; an in-place op's source, what it writes into its first argument; views: none)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Written(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            in_place = func.overloadpacket.__name__.endswith("_")
            written = args[1:] if in_place else out if isinstance(out, (tuple, list)) else [out]
            sizes = [t.numel() for t in written if isinstance(t, torch.Tensor)]
            if not func.is_view:
                Written.count += max(sizes, default=1) if in_place else sum(sizes)
            return out

    w, size = 100, 1000
    cb = Grokfast(filter="ma", window_size=w)
    for _ in range(w + 3):  # past the warm-up and one recomputation of the sum
        cb.filter_gradient("p", torch.randn(size))
    with Written():
        cb.filter_gradient("p", torch.randn(size))
    assert Written.count < 12 * size  # the earlier filter: > (w + 1) * size


@pytest.mark.parametrize("kwargs", [{"filter": "ema"}, {"filter": "ema", "ema_init": "zero"},
                                    {"filter": "ma", "window_size": 3}])
def test_a_step_not_kept_leaves_the_filter_as_if_it_never_happened(kwargs):
    # under AMP a step with a non-finite gradient is skipped; the flag is a device tensor (no host read), and the
    # EMA started from the first gradient starts from the first one kept
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(4, generator=gen) for _ in range(6)]
    skipping, plain = Grokfast(**kwargs), Grokfast(**kwargs)
    skipping.filter_gradient("w", torch.full((4,), float("inf")), keep=torch.tensor(False))
    for k, g in enumerate(grads):
        if k == 3:
            skipping.filter_gradient("w", g * 1e3, keep=torch.tensor(False))
        assert torch.equal(skipping.filter_gradient("w", g, keep=torch.tensor(True)), plain.filter_gradient("w", g))


def test_a_window_saved_by_the_earlier_concatenating_filter_continues_to_float_rounding():
    # checkpoints written before the ring hold the window oldest first and nothing else
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(3, generator=gen) for _ in range(9)]
    live = GradientWindow(grads[0], 4)
    for g in grads[:6]:
        ma_filter(g, live, 5.0)
    restored = GradientWindow.restore(torch.stack(grads[2:6]), 4)  # what the earlier code saved after 6 steps
    for g in grads[6:]:
        assert torch.allclose(ma_filter(g, restored, 5.0), ma_filter(g, live, 5.0), rtol=1e-6, atol=1e-6)


def test_ma_defaults_are_the_papers():
    cb = Grokfast(filter="ma")
    assert (cb.window_size, cb.lamb, cb.warmup) == (100, 5.0, True)


@pytest.mark.parametrize("kwargs, key", [
    ({"filter": "sma"}, "filter"), ({"alpha": 1.0}, "alpha"), ({"alpha": -0.1}, "alpha"),
    ({"lamb": -1.0}, "lamb"), ({"filter": "ma", "window_size": 0}, "window_size"),
    ({"warmup": "yes"}, "warmup"), ({"ema_init": "ones"}, "ema_init"),
])
def test_bad_settings_name_the_setting(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        Grokfast(**kwargs)


@pytest.mark.parametrize("kwargs", [{"filter": "ema", "alpha": 0.9}, {"filter": "ma", "window_size": 3}])
def test_state_survives_a_checkpoint_round_trip_and_continues_identically(kwargs):
    torch.manual_seed(0)
    grads = [{"a.weight": torch.randn(3, 2), "b.bias": torch.randn(4)} for _ in range(7)]
    first = Grokfast(**kwargs)
    for step in grads[:4]:
        for name, g in step.items():
            first.filter_gradient(name, g)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = Grokfast(**kwargs)
    second.load_state_dict(torch.load(buffer))
    assert set(second.state) == {"a.weight", "b.bias"}
    for step in grads[4:]:
        for name, g in step.items():
            assert torch.equal(first.filter_gradient(name, g), second.filter_gradient(name, g))
    with pytest.raises(ConfigError, match="filter"):
        Grokfast(filter="ma" if kwargs["filter"] == "ema" else "ema").load_state_dict(first.state_dict())


class OneWeight(pl.LightningModule):
    """loss = 10·w: the gradient is 10 at every step; SGD with lr 1 moves w by minus the stepped gradient."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return 10 * self.w

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self):
        return [torch.zeros(1)] * 4


def fit_one_weight(callbacks, **trainer_kwargs) -> pl.Trainer:
    module = OneWeight()
    trainer = pl.Trainer(max_steps=3, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **trainer_kwargs)
    trainer.fit(module)
    return trainer


def test_clipping_acts_on_the_raw_gradient_before_the_filter_and_is_handed_back_after_fit():
    # clip then filter (EMA from the first gradient): 10 -> clipped to 1 -> (1+λ)·1 = 3, so w moves by -3 a step.
    # (filter then clip, Lightning's own hook order, would give 30 -> 1: -1 a step.)
    grokfast = Grokfast(filter="ema", lamb=2.0)
    trainer = fit_one_weight([grokfast], gradient_clip_val=1.0)
    assert trainer.lightning_module.w.item() == pytest.approx(-9.0)
    assert trainer.gradient_clip_val == 1.0 and grokfast.clip is None


def test_a_fused_optimiser_under_fp16_scaling_is_refused():
    # it would unscale inside its step, after the filter: the filter (and the clip) would see scaled gradients
    fused = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=True)
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()), optimizers=[fused],
                              gradient_clip_val=None)
    with pytest.raises(ConfigError, match="^optimizer.fused="):
        Grokfast().on_fit_start(trainer, None)
    trainer.precision_plugin.scaler = None  # bf16-mixed or 32-bit: nothing to unscale
    Grokfast().on_fit_start(trainer, None)


class VaryingGradients(pl.LightningModule):
    """loss_t = a_t·w + e_t·b: the gradient at step t is (a_t, e_t), whatever the weights. SGD with lr 1 and no
    momentum moves the weights by minus exactly the gradient it is given, so the update is observable."""

    GRADS = torch.tensor([[3.0, -4.0, 0.5, 2.0, 1.0], [-1.0, 2.0, 6.0, -0.5, 0.0], [0.2, 0.1, -0.3, 0.4, 0.2],
                          [5.0, 5.0, -5.0, 1.0, -2.0], [-0.7, 0.3, 0.9, -8.0, 4.0]])

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.b = torch.nn.Parameter(torch.zeros(2))
        self.updates: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self._before = torch.cat([self.w, self.b]).detach().clone()
        return batch[0, :3] @ self.w + batch[0, 3:] @ self.b

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.updates.append(torch.cat([self.w, self.b]).detach() - self._before)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.GRADS, batch_size=1)  # batches (1, 5), in order


def clipped(grad: torch.Tensor, algorithm: str, clip: float) -> torch.Tensor:
    """Lightning's clips, by hand: norm (torch's clip_grad_norm_, with its 1e-6) or each value to [-clip, clip]."""
    if algorithm == "value":
        return grad.clamp(-clip, clip)
    return grad * min(1.0, clip / (grad.norm().item() + 1e-6))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_the_applied_update_is_filter_of_clip_of_the_gradient(algorithm):
    alpha, lamb, clip = 0.9, 50.0, 1.0  # a huge λ: filter-then-clip would bring every update back to the clip
    module = VaryingGradients()
    trainer = pl.Trainer(max_steps=5, callbacks=[Grokfast(filter="ema", alpha=alpha, lamb=lamb)],
                         gradient_clip_val=clip, gradient_clip_algorithm=algorithm, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module)
    h = None
    for grad, update in zip(VaryingGradients.GRADS, module.updates, strict=True):
        c = clipped(grad, algorithm, clip)
        h = c if h is None else alpha * h + (1 - alpha) * c  # the reference code's EMA: h_0 = first gradient
        expected = c + lamb * h
        assert torch.allclose(update, -expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(update, -clipped(expected, algorithm, clip), rtol=1e-2)  # not clip(filter(g))
    assert len(module.updates) == 5


def test_without_a_clip_value_the_gradient_is_only_filtered():
    # the paper's regime: no clipping at all, 10 -> 30 a step
    trainer = fit_one_weight([Grokfast(filter="ema", lamb=2.0)])
    assert trainer.lightning_module.w.item() == pytest.approx(-90.0)


def test_lambda_zero_leaves_the_gradient_alone():
    trainer = fit_one_weight([Grokfast(filter="ma", window_size=2, lamb=0.0)])
    assert trainer.lightning_module.w.item() == pytest.approx(-30.0)  # λ = 0: the plain gradient 10, three steps


GROKFAST_EMA = "+callbacks.grokfast={_target_: callbacks.interventions.grokfast.Grokfast, filter: ema}"


def test_short_run_with_grokfast_finishes_and_changes_the_trajectory(run_config):
    plain, _ = run_config(["trainer.max_steps=20"], name="plain")
    filtered, run_dir = run_config([GROKFAST_EMA, "trainer.max_steps=20"], name="ema")
    assert filtered["status"] == "completed" and filtered["steps"] == 20
    assert filtered["final"]["train/loss"] != plain["final"]["train/loss"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "Grokfast" in k]
    assert state["filter"] == "ema" and state["state"] and all(n.startswith("net.") for n in state["state"])


def test_resume_with_a_moving_average_filter_matches_an_uninterrupted_run(run_config):
    grokfast = ["+callbacks.grokfast._target_=callbacks.interventions.grokfast.Grokfast", "+callbacks.grokfast.filter=ma",
                "+callbacks.grokfast.window_size=6"]
    # the window is full when the first run stops at 12: a resume that lost it would warm up again
    assert_resume_ends_as_straight_run(run_config, grokfast, steps=24, stop_at=12)


GROKFAST_SEEDS, GROKFAST_MAX_STEPS = (0, 1, 2, 3, 4), 3500


@pytest.mark.rounding
def test_grokfast_reaches_095_in_fewer_steps_from_the_same_init(run_config):
    """p=23 addition, 80% train, batches of 64, lr 2e-3, wd 1, the default clip 1.0 (applied before the filter),
    each seed's two arms from the same init; the medians over seeds, the no-filter arm capped (a run that has not got
    there counts as the cap: a lower bound). Steps to val acc 0.95 over seeds 0-9, AVX-512 / default kernels
    (ATEN_CPU_CAPABILITY=default): EMA λ=5 1,700-2,600 / 1,675-2,600 (medians 2,125 / 2,062); no filter 2,600-7,675
    and one seed not within 15,000 (median 4,075 under both). Over seeds 0-4 as here: EMA median 2,075 / 1,875, no
    filter (capped at 3,500) 3,500, a ratio of 0.59 / 0.54 against the 0.8 asserted (the EMA median may grow by a
    third before it fails). Where the filter does not help: with full batches at lr 1e-3 EMA was faster for seed 0
    only of seeds 0-4, and at lr 3e-3 for none; with batches of 64 at lr 3e-3 for 2 of 3."""
    task = ["data.p=23", "data.train_fraction=0.8", "data.batch_size=64", "model.hidden_dim=128", "optimizer.lr=2e-3",
            "threads=1", f"trainer.max_steps={GROKFAST_MAX_STEPS}", "trainer.val_check_interval=25",
            "trainer.log_every_n_steps=25", "callbacks.grokking_time.val_thresholds=[0.95]",
            "callbacks.grokking_time.grokked_threshold=0.95", "callbacks.grokking_time.stop_after_steps=0",
            "callbacks.checkpoint.every_n_train_steps=100000"]
    key, plain_steps, fast_steps = "grok/val_acc_0.95_step", [], []
    for seed in GROKFAST_SEEDS:
        plain, _ = run_config([*task, f"seed={seed}"], name=f"plain_{seed}")
        fast, _ = run_config([*task, f"seed={seed}", "grokfast=ema", "callbacks.grokfast.lamb=5.0"], name=f"ema_{seed}")
        assert plain["init_fingerprint"] == fast["init_fingerprint"]
        plain_steps.append(plain["grok"][key] or GROKFAST_MAX_STEPS)  # not reached: at least this many (a bound)
        fast_steps.append(fast["grok"][key] or math.inf)  # not reached: counted against the filter
    assert statistics.median(fast_steps) < 0.8 * statistics.median(plain_steps), (fast_steps, plain_steps)


@pytest.mark.parametrize("size, p, d_model", [("source", 97, 128), ("cpu", 97, 64)])
def test_the_paper_experiment_composes_to_the_papers_task_and_regime(size, p, d_model):
    """ironjr/grokfast main.py: x·y mod 97, 50% train, batch 512, 2 layers of width 128 with 4 heads, Adam
    lr 1e-3 betas (0.9, 0.98) with 10 warmup steps, no clipping; filters α 0.98 λ 2 / w 100 λ 5."""
    from runtime.config.build import build
    from runtime.config.compose import compose_config

    experiment = ["experiment=grokfast_paper", f"size={size}"]
    cfg = compose_config(experiment)
    assert (cfg.data.p, list(cfg.data.operations), cfg.data.format) == (p, ["mul"], "tokens")
    assert (cfg.data.train_fraction, cfg.data.batch_size) == (0.5, 512)
    model = cfg.model
    assert (model.n_layers, model.n_heads, model.d_model, model.d_mlp) == (2, 4, d_model, 4 * d_model)
    assert (model.activation, model.norm) == ("gelu", "layernorm")
    assert cfg.trainer.gradient_clip_val is None
    assert cfg.callbacks.grokking_time.grokked_threshold == 0.95
    assert 0.95 in cfg.callbacks.grokking_time.val_thresholds
    recipe = build(cfg.optimizer, "optimizer")
    assert (recipe.lr, recipe.betas, recipe.eps, recipe.warmup_steps) == (1e-3, (0.9, 0.98), 1e-8, 10)
    optimizer, _ = recipe.build(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)))
    assert all(group["weight_decay"] == 0 for group in optimizer.param_groups)  # AdamW without decay is Adam
    assert "grokfast" not in cfg.callbacks  # the no-filter arm

    ema = compose_config([*experiment, "grokfast=ema"]).callbacks.grokfast
    ma = compose_config([*experiment, "grokfast=ma"]).callbacks.grokfast
    assert (ema.filter, ema.alpha, ema.lamb, ema.l2) == ("ema", 0.98, 2.0, 0.0)
    assert (ma.filter, ma.window_size, ma.lamb, ma.warmup, ma.l2) == ("ma", 100, 5.0, True, 0.0)


class Quadratic(pl.LightningModule):
    """loss_t = |w - x_t|²·(1 + |w|²)/2 for a different x_t each step: gradients depend on the weights."""

    TARGETS = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4))

    @staticmethod
    def loss(w, x):
        return ((w - x) ** 2).sum() * (1 + (w**2).sum()) / 2

    def training_step(self, batch, batch_idx):
        return self.loss(self.w, batch[0])

    def configure_optimizers(self):  # the framework's optimiser with its own decay off
        return torch.optim.AdamW(self.parameters(), lr=0.05, betas=(0.9, 0.98), weight_decay=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.TARGETS, batch_size=1)


def test_l2_makes_the_step_the_reference_codes_adam_with_weight_decay():
    # ironjr/grokfast main.py: gradfilter_ema on p.grad, then torch.optim.Adam(weight_decay=wd).step()
    alpha, lamb, l2 = 0.98, 2.0, 0.01
    module = Quadratic()
    trainer = pl.Trainer(max_steps=6, callbacks=[Grokfast(filter="ema", alpha=alpha, lamb=lamb, l2=l2)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module)

    w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4))
    adam = torch.optim.Adam([w], lr=0.05, betas=(0.9, 0.98), weight_decay=l2)
    h = None
    for x in Quadratic.TARGETS:
        adam.zero_grad()
        Quadratic.loss(w, x).backward()
        h = w.grad.clone() if h is None else alpha * h + (1 - alpha) * w.grad
        w.grad += lamb * h
        adam.step()
    assert torch.allclose(module.w.detach(), w.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w.detach(), torch.linspace(-1.0, 1.0, 4), atol=1e-2)  # it did move


def test_the_benchs_paper_arms_compose_to_the_papers_filters_and_l2():
    """bench/time_to_grok.py --paper: the reference runs' settings per arm (README commands of ironjr/grokfast);
    with one --l2 for all, the no-filter arm only adds the L2 (λ = 0)."""
    from bench.time_to_grok import arm_overrides
    from runtime.config.compose import compose_config

    def grokfast(arm, l2):
        return compose_config(["experiment=grokfast_paper", "size=cpu", *arm_overrides(arm, l2)]).callbacks.get("grokfast")

    assert grokfast("none", "paper") is None
    ma, ema = grokfast("ma", "paper"), grokfast("ema", "paper")
    assert (ma.filter, ma.window_size, ma.lamb, ma.l2) == ("ma", 100, 5.0, 0.01)
    assert (ema.filter, ema.alpha, ema.lamb, ema.l2) == ("ema", 0.98, 2.0, 0.005)
    plain = grokfast("none", "0.005")
    assert (plain.lamb, plain.l2) == (0.0, 0.005)
    assert grokfast("ema", "0.005").l2 == 0.005 and grokfast("none", "0") is None


def test_under_bf16_with_clipping_the_raw_gradient_is_clipped_with_the_fused_adamw_kept(run_config):
    # bf16-mixed keeps the fused AdamW (no loss scaler); Lightning's mixed-precision plugin refuses to clip that
    # optimiser, so the callback clips through the module, which clips it itself
    summary, run_dir = run_config([GROKFAST_EMA, "trainer.precision=bf16-mixed", "trainer.max_steps=5"])
    assert summary["status"] == "completed", summary.get("error")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"]

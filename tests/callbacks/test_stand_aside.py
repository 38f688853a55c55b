"""Diagnostics on any task: on one without modular structure (random tokens answered at the last 2 positions) the
Fourier spectrum stands aside in one line, while routing, attention, gates, curvature and the grokking curves
measure; on modular data the structure is what the diagnostics read, and routing reads the answer position."""
from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger

from callbacks import GrokkingTime
from callbacks.diagnostics.attention import AttentionMaps
from callbacks.diagnostics.base import Diagnostic
from callbacks.diagnostics.curvature import Curvature
from callbacks.diagnostics.fourier import FourierSpectrum
from callbacks.diagnostics.gates import GateDiagnostics
from callbacks.diagnostics.grokking_curves import GrokkingCurves
from callbacks.diagnostics.routing import RoutingDiagnostics
from datamodules import ModularArithmetic
from datamodules.task import ModularStructure, Task, modular_structure
from lightning_modules import AdamWRecipe, TaskModule
from nets import GatedMLP, RoutedFFN, SoftmaxAttention, Transformer
from regularizers.routing import entropy
from tests.helpers import SEQ_LEN, VOCAB, RandomTokens

pytestmark = pytest.mark.usefixtures("one_thread")

FOURIER_LINE = ("[grokking-lab] fourier: stands aside (needs modular-arithmetic structure: data.p and its Z_p grid; "
                "this task has none)")


class Recorder(Logger):
    """Keeps every logged row."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "recorder"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass

    def logged(self, prefix: str) -> dict[str, list[float]]:
        values: dict[str, list[float]] = {}
        for _, row in self.rows:
            for key, value in row.items():
                if key.startswith(prefix):
                    values.setdefault(key, []).append(value)
        return values


def routed_transformer(vocab=VOCAB, num_classes=VOCAB, seq_len=SEQ_LEN):
    """2 layers, 2 attention heads, 3 FFN heads mixed by a router."""
    torch.manual_seed(0)
    return Transformer(vocab_size=vocab, num_classes=num_classes, seq_len=seq_len, n_layers=2, d_model=16,
                       mixer=partial(SoftmaxAttention, n_heads=2), ffn=partial(RoutedFFN, n_heads=3))


def fit(task, net, callbacks, tmp_path, steps=4):
    """A short real fit (validation every 2 steps); -> (module, recorder)."""
    recorder = Recorder()
    trainer = pl.Trainer(max_steps=steps, val_check_interval=2, check_val_every_n_epoch=None, log_every_n_steps=1,
                         num_sanity_val_steps=0, accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=recorder,
                         default_root_dir=str(tmp_path), callbacks=callbacks)
    module = TaskModule(net=net, spec=task.spec, optimizer=AdamWRecipe(lr=1e-2, weight_decay=0.0, fused=False))
    trainer.fit(module, datamodule=task)
    return module, recorder


def stand_aside_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if "stands aside" in line]


def plots(tmp_path) -> set[str]:
    return {p.name for p in (tmp_path / "plots").glob("*.png")}


def test_the_fake_task_meets_the_contract_and_has_no_modular_structure():
    task = RandomTokens()
    assert isinstance(task, Task) and modular_structure(task) is None
    assert task.split_names() == ("train", "val")


def test_on_a_task_without_modular_structure_fourier_stands_aside_and_the_rest_measure(tmp_path, capsys):
    task = RandomTokens()
    fourier = FourierSpectrum(every_n_steps=2, plot_every_n_steps=2)
    routing = RoutingDiagnostics(every_n_steps=2, plot_every_n_steps=2, probe_size=20)
    attention = AttentionMaps(every_n_steps=2, n_examples=8)
    curvature = Curvature(every_n_steps=2, subset_size=12, n_probes=2, power_iters=5)
    callbacks = [fourier, routing, attention, curvature, GateDiagnostics(every_n_steps=2), GrokkingCurves(2),
                 GrokkingTime()]
    module, recorder = fit(task, routed_transformer(), callbacks, tmp_path)

    # fourier for the task (at fit start), gates for the net (a transformer has none: at its first measurement)
    assert stand_aside_lines(capsys) == [FOURIER_LINE, "[grokking-lab] gates: stands aside (the net has no gates: "
                                                       "nothing to read)"]
    assert fourier.stood_aside is not None and fourier.history == []
    assert [c.stood_aside is None for c in callbacks[1:-1]] == [True, True, True, False, True]
    assert not recorder.logged("fourier/") and not {"fourier_spectrum.png", "fourier_spectrum_evolution.png"} & plots(
        tmp_path)

    # routing: entropy and decisiveness over the answer positions of the probe, recomputed from the final weights
    logged = recorder.logged("routing/eval_entropy/")
    assert set(logged) == {"routing/eval_entropy/layer_0", "routing/eval_entropy/layer_1"}
    assert len(logged["routing/eval_entropy/layer_0"]) == 3  # at init, after steps 2 and 4
    probe = task.examples("train", 20)
    module.eval()
    with torch.no_grad():
        routing_weights = module.net(probe.inputs).routing
    for i, weights in enumerate(routing_weights):
        at_answer = weights[:, -2:].reshape(-1, 3)  # 20 examples x 2 answer positions
        assert logged[f"routing/eval_entropy/layer_{i}"][-1] == pytest.approx(entropy(at_answer).mean().item(),
                                                                               rel=1e-5)
        decisiveness = recorder.logged("routing/decisiveness/")[f"routing/decisiveness/layer_{i}"][-1]
        assert decisiveness == pytest.approx(at_answer.max(-1).values.mean().item(), rel=1e-5)

    # attention on the validation probe; curvature on the training subset; curves from the logged metrics
    assert [tuple(m.shape) for m in attention.maps] == [(2, SEQ_LEN, SEQ_LEN)] * 2
    assert attention.tokens == task.splits["val"].inputs[0].tolist()
    values = recorder.logged("curvature/")
    assert set(values) == {f"curvature/{k}" for k in ("grad_norm", "hessian_trace", "top_eigenvalue",
                                                       "fisher_trace", "jacobian_norm")}
    assert all(len(v) == 3 and all(torch.isfinite(torch.tensor(v))) for v in values.values())
    assert {"routing_entropy.png", "attention_maps.png", "curvature_history.png", "grok_curves.png"} <= plots(
        tmp_path)
    assert not {"routing_head_map.png", "routing_usage_by_operation.png"} & plots(tmp_path)


def test_gates_measure_on_a_one_hot_task_without_modular_structure(tmp_path, capsys):
    task = RandomTokens(onehot=True)
    gates = GateDiagnostics(every_n_steps=2, plot_every_n_steps=2)
    torch.manual_seed(0)
    net = GatedMLP(in_features=VOCAB, num_classes=VOCAB, hidden_dim=8, n_layers=3)
    fit(task, net, [gates, FourierSpectrum(every_n_steps=2)], tmp_path)
    assert stand_aside_lines(capsys) == [FOURIER_LINE]
    assert [h["step"] for h in gates.history] == [0, 2, 4] and all(len(h["gates"]) == 3 for h in gates.history)
    with torch.no_grad():
        expected = net.eval()(task.examples("train", 256).inputs).gates.reshape(-1, 3).mean(0)
    assert gates.history[-1]["gates"] == pytest.approx(expected.tolist(), rel=1e-6)
    assert {"gates_evolution.png", "gates_depth_vs_accuracy.png"} <= plots(tmp_path)


def test_curvature_fisher_sums_log_probabilities_over_the_answer_tokens():
    task = RandomTokens()
    task.setup()
    net = routed_transformer().double()
    module = TaskModule(net=net, spec=task.spec, optimizer=AdamWRecipe())
    callback = Curvature(subset_size=5, n_probes=1, power_iters=2, fisher_chunk_size=2)
    batch = callback.subset(SimpleNamespace(datamodule=task))
    values = callback.compute(module, batch)
    module.eval()
    params = list(net.parameters())
    per_example = []
    for i in range(5):  # log p(y | x) = the sum over the two answer tokens (teacher-forced)
        nll = F.cross_entropy(net(batch.inputs[i:i + 1]).logits[0, -2:], batch.targets[i, -2:], reduction="sum")
        per_example.append(sum((g**2).sum() for g in torch.autograd.grad(nll, params)))
    assert values["fisher_trace"] == pytest.approx(float(torch.stack(per_example).mean()), rel=1e-8)


class Needy(Diagnostic):
    name = "needy"

    def requirements(self, trainer, pl_module):
        return "needs what this task lacks"

    def measure(self, trainer, pl_module):
        raise AssertionError("a diagnostic that stood aside measured")


def test_a_diagnostic_stands_aside_once_and_does_nothing_after(capsys):
    callback = Needy(every_n_steps=1)
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, sanity_checking=False)
    for stage in ("fit", "fit", "test"):
        callback.setup(trainer, None, stage)
    callback.on_train_start(trainer, None)
    callback.on_train_batch_end(trainer, None)
    callback.on_train_end(trainer, None)
    assert stand_aside_lines(capsys) == ["[grokking-lab] needy: stands aside (needs what this task lacks)"]
    assert callback.stood_aside == "needs what this task lacks"
    quiet = Needy(every_n_steps=1)  # other processes under DDP: off too, without a line
    quiet.setup(SimpleNamespace(is_global_zero=False), None, "fit")
    assert quiet.stood_aside and stand_aside_lines(capsys) == []


# ---- modular data --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("format", ["onehot", "tokens", "sequence"])
def test_modular_structure_is_the_datamodule_s_own(format):
    data = ModularArithmetic(p=5, operations=["add", "mul"], format=format)
    structure = modular_structure(data)
    assert isinstance(structure, ModularStructure)
    assert (structure.p, structure.operations, structure.format) == (5, ("add", "mul"), format)
    assert structure.operand_columns == (None if format == "onehot" else data.operand_columns)
    assert structure.all is data.all
    assert all(torch.equal(a, b) for a, b in zip(structure.grid, data.grid()))


def test_sequence_format_routing_is_read_at_the_answer_position_not_the_last():
    data = ModularArithmetic(p=5, format="sequence")
    data.setup()
    net = routed_transformer(vocab=data.spec.vocab_size, num_classes=data.spec.num_classes, seq_len=7)
    module = TaskModule(net=net, spec=data.spec, optimizer=AdamWRecipe())
    trainer = SimpleNamespace(datamodule=data, is_global_zero=True, global_step=0)
    callback = RoutingDiagnostics()
    callback.setup(trainer, module, "fit")
    metrics = callback.measure(trainer, module)
    with torch.no_grad():
        weights = net.eval()(data.grid().inputs).routing[0]  # (25, 7, heads): input position 4 is EQ, predicting c
    assert metrics["routing/eval_entropy/layer_0"] == pytest.approx(entropy(weights[:, 4]).mean().item(), rel=1e-6)
    assert metrics["routing/eval_entropy/layer_0"] != pytest.approx(entropy(weights[:, -1]).mean().item(), rel=1e-6)
    assert (callback.head_maps[0] == weights[:, 4].argmax(-1).reshape(5, 5).numpy()).all()

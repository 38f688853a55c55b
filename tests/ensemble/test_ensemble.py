"""Ensembles: each member logs and ends as a solo run of its config would, members do not disturb each other,
and `hydra/launcher=ensemble` turns a multirun into ensembles whose folders the analysis reads like any sweep.

Tolerance: members and solo runs differ only in float rounding (batched matmuls under vmap, the stacked AdamW
against torch's fused kernel), so logged losses agree to rel 1e-4 and accuracies to 1e-6 over these short runs.
"""
import signal
from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from analysis import load_sweep
from callbacks.run.stop_request import stop_request
from core.errors import ConfigError
from datamodules.batch import Batch, TaskSpec
from lightning_modules.answers import task_loss
from lightning_modules.ensemble_module import EnsembleModule
from lightning_modules.optimization import AdamWRecipe
from nets import MLP as OneHotMLP
from nets import MLPFFN, GatedDeltaNet, HybridLM, SoftmaxAttention, Transformer
from runtime.config.build import build
from runtime.config.compose import compose_config
from runtime.engines.ensemble import run_ensemble
from runtime.engines.members import Member
from tests.conftest import SMALL, launch_cli, read_json, reproducible_rows, run_quietly
from tests.fla_stand_in import force_fla

MLP = ["data.p=23", "data.train_fraction=0.6", "trainer.max_steps=60"]
TRANSFORMER = ["experiment=transformer_grok", "size=cpu", "data.p=11", "model.d_model=32", "model.n_heads=2",
               "trainer.max_steps=20", "trainer.val_check_interval=5", "trainer.log_every_n_steps=5"]
# groks at lr 3e-3: seeds 0-9 reached val acc 0.99 at steps 1,275-1,750 (seed 0: 1,325 / 1,350) under both AVX-512
# and ATEN_CPU_CAPABILITY=default kernels, so 2,500 steps leave seed 0 a margin of ~1,100 steps, more than the
# spread between seeds
LEARNS = ["data.p=23", "data.train_fraction=0.8", "model.hidden_dim=128", "trainer.max_steps=2500",
          "trainer.val_check_interval=25", "trainer.log_every_n_steps=25",
          "callbacks.grokking_time.stop_after_steps=50"]


def train_ensemble(tmp_path, common, per_member, name="ensemble", callbacks=()):
    members = []
    for index, own in enumerate(per_member):
        out = tmp_path / name / str(index)
        cfg = compose_config([*SMALL, *common, *own], output_dir=out)
        loggers = [build(node, f"logger.{key}") for key, node in cfg.logger.items() if node]
        members.append(Member(cfg, out, own, loggers))
    return run_ensemble(members, callbacks), [m.out for m in members]


def logged(run_dir):
    """{(step, metric): value} of every metric cell in a run's metrics.csv, but the wall-clock speeds (`speed/`: a
    solo run measures them, an ensemble, whose members share each step, does not)."""
    return {(int(row["step"]), key): float(value) for row in reproducible_rows(run_dir)
            for key, value in row.items() if value and key not in ("step", "epoch")}


def assert_same_run(member, member_dir, solo, solo_dir, rel=1e-4, acc=1e-6):
    """Same rows, same metrics (losses within `rel`, accuracies within `acc`), same ending."""
    theirs, ours = logged(solo_dir), logged(member_dir)
    assert ours.keys() == theirs.keys()
    for cell, value in theirs.items():
        tolerance = dict(rel=0, abs=acc) if "acc" in cell[1] else dict(rel=0 if "grok" in cell[1] else rel)
        assert ours[cell] == pytest.approx(value, **tolerance), cell
    for key in ("status", "steps", "init_fingerprint", "grok", "grokked", "seed"):
        assert member[key] == solo[key], key
    for key, value in solo["final"].items():
        assert member["final"][key] == pytest.approx(value, rel=rel, abs=acc), key


@pytest.mark.rounding
@pytest.mark.parametrize("common", [MLP, TRANSFORMER], ids=["mlp", "transformer"])
def test_every_member_logs_what_its_solo_run_logs(tmp_path, run_config, one_thread, common):
    per_member = [["seed=0"], ["seed=1", "optimizer.weight_decay=0.3"], ["seed=2", "optimizer.lr=3e-3",
                                                                          "optimizer.weight_decay=0.0"]]
    summaries, dirs = train_ensemble(tmp_path, common, per_member)
    for own, summary, member_dir in zip(per_member, summaries, dirs):
        solo, solo_dir = run_config([*common, *own], name="solo_" + "_".join(own))
        assert_same_run(summary, member_dir, solo, solo_dir)
        assert summary["ensemble"]["size"] == 3 and (member_dir / "init.pt").is_file()
        assert summary["ensemble"]["compiled"] is False  # ensemble.compile=auto: eager on a CPU
        weights = torch.load(member_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        solo_weights = torch.load(solo_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        # saved under the solo names; loosely, as Adam turns rounding noise into lr-sized steps where the true
        # gradient is 0 (the attention's key bias: softmax ignores a shift)
        for name, tensor in weights.items():
            assert (tensor - solo_weights[name]).norm() <= 1e-2 * solo_weights[name].norm() + 1e-6, name


@pytest.mark.rounding
def test_a_diverging_member_stops_alone_and_keeps_its_last_good_weights(tmp_path, run_config, one_thread):
    # init_scale 1e20 overflows the logits: the loss is NaN on the very first step
    summaries, dirs = train_ensemble(tmp_path, MLP, [["seed=0"], ["seed=1", "init_scale=1e20"], ["seed=2"]])
    bad = summaries[1]
    assert bad["status"] == "diverged" and bad["steps"] == 0 and "at step 0" in bad["error"]
    kept = torch.load(dirs[1] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    init = torch.load(dirs[1] / "init.pt", weights_only=True)
    assert all(torch.equal(kept[f"net.{name}"], tensor) for name, tensor in init.items())
    assert not (dirs[1] / "metrics.csv").exists()  # it never finished a step, so it logged nothing
    for index in (0, 2):
        solo, solo_dir = run_config([*MLP, f"seed={index}"], name=f"solo{index}")
        assert_same_run(summaries[index], dirs[index], solo, solo_dir)


class MemberUpdates(Callback):
    """Which members' weights each optimiser step changed: {step: (E,) bool}, and the weights after the last step."""

    def __init__(self):
        self.changed: dict[int, list[bool]] = {}
        self.before = self.last = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = module.stacked.flat.detach().clone()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.last = module.stacked.flat.detach().clone()
        self.changed[trainer.global_step] = (self.last != self.before).any(1).tolist()


@pytest.mark.rounding
def test_a_grokked_member_stops_after_its_patience_while_the_others_go_on(tmp_path, one_thread):
    """The stopping rule itself, whatever step rounding lets the member grok at: it stops exactly
    stop_after_steps (50) after the grokking step it logged, its weights no longer change from there, and the
    other member trains and logs to the end."""
    updates = MemberUpdates()
    fast, slow = ["optimizer.lr=3e-3"], ["optimizer.lr=1e-5", "seed=1"]
    (grokked, still), (grokked_dir, still_dir) = train_ensemble(tmp_path, LEARNS, [fast, slow], callbacks=[updates])
    cells = logged(grokked_dir)
    # the grokking step is the first logged validation at val acc >= 0.99 (the row of step s is s - 1), and
    # metrics.csv and summary.json say the same
    first = min(row + 1 for row, key in cells if key == "val/acc" and cells[row, key] >= 0.99)
    assert grokked["grok"]["grok/val_acc_0.99_step"] == first
    assert [value for (_, key), value in cells.items() if key == "grok/val_acc_0.99_step"] == [first]
    assert grokked["status"] == "stopped_after_grokking" and grokked["steps"] == first + 50
    assert max(row for row, _ in cells) == grokked["steps"] - 1  # no row after it stopped
    # it trained at every step up to its stop, and never after; the other one at every step to the end
    assert [changed for changed, _ in updates.changed.values()] == [
        step <= grokked["steps"] for step in updates.changed]
    assert sorted(updates.changed) == list(range(1, 2501)) and all(c for _, c in updates.changed.values())
    saved = torch.load(grokked_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == grokked["steps"]
    assert torch.equal(torch.cat([t.flatten() for t in saved["state_dict"].values()]), updates.last[0])
    assert still["status"] == "completed" and still["steps"] == 2500 and not still["grokked"]
    still_cells = logged(still_dir)
    assert max(row for row, _ in still_cells) == 2499
    assert {row for row, key in still_cells if key == "val/acc"} == set(range(24, 2500, 25))


class SignalAt(Callback):
    """Delivers a stop request (as the SIGTERM handler records one) at the end of optimiser step `at`."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at:
            stop_request.handle(signal.SIGTERM, None)


def test_a_stop_signal_ends_every_member_at_the_step_boundary_with_its_weights_and_summary(tmp_path, one_thread):
    """SIGTERM (what a deadline or SLURM sends) mid-run: the step under way completes, then every member still
    training is `interrupted` at that step with its signal, its final numbers, its weights and no later row; a
    member that had already ended keeps its own ending. Nothing is lost."""
    summaries, dirs = train_ensemble(tmp_path, ["trainer.max_steps=40"], [["seed=0"], ["seed=1"]],
                                     callbacks=[SignalAt(13)])
    for summary, run_dir in zip(summaries, dirs):
        assert (summary["status"], summary["steps"], summary["signal"]) == ("interrupted", 13, "SIGTERM")
        assert read_json(run_dir / "summary.json")["status"] == "interrupted"
        assert set(summary["final"]) >= {"train/loss", "val/loss", "val/acc"}
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 13
        assert max(int(row["step"]) for row in reproducible_rows(run_dir)) == 12  # the row of step 13, no later
    assert signal.getsignal(signal.SIGTERM) is not stop_request.handle  # the handlers are given back


@pytest.mark.parametrize("kind", ["transformer", "hybrid_lm"])
def test_a_vmapped_step_of_gdn_nets_never_enters_fla_and_gives_each_member_its_solo_numbers(monkeypatch, one_thread,
                                                                                          kind):
    """On a GPU the input under vmap still says is_cuda; fla's Function is ctx-style and torch.func refuses it. With a
    stand-in for fla forced on (ctx-style too), the ensemble's step (member_step under StackedNets.vmap) must not
    enter it, and each member's loss and gradient must be those of its net alone in the PyTorch form (float64)."""
    stand_in = force_fla(monkeypatch)
    vocab, length = 7, 6

    def gdn_net(seed, kernel):
        torch.manual_seed(seed)
        gdn = partial(GatedDeltaNet, n_heads=2, kernel=kernel)
        if kind == "transformer":
            return Transformer(vocab, vocab, length, n_layers=1, d_model=8, mixer=gdn, ffn=MLPFFN).double()
        return HybridLM(vocab, vocab, length, layers=["gdn", "attn"], d_model=8, gdn=gdn,
                        attn=partial(SoftmaxAttention, n_heads=2)).double()

    nets = [gdn_net(seed, "auto") for seed in range(2)]
    generator = torch.Generator().manual_seed(0)
    inputs, targets = (torch.randint(0, vocab, (5, length), generator=generator) for _ in range(2))
    batch = Batch(inputs, targets, torch.ones(5, length, dtype=torch.float64), torch.ones(5, length, dtype=torch.bool),
                  torch.zeros(5, dtype=torch.long))
    nets[0](inputs)
    assert stand_in.calls == 1  # a plain forward of these nets runs it
    module = EnsembleModule(nets, TaskSpec(num_classes=vocab, vocab_size=vocab, seq_len=length),
                            [AdamWRecipe()] * 2, [{}, {}], None, [])
    total, _ = module.stacked.vmap(lambda row, w, b: module.member_step(row, w, b, False), module.reg_weights(),
                                   batch, in_dims=(0, None))
    total.sum().backward()
    assert stand_in.calls == 1
    for index in range(2):
        solo = gdn_net(index, "torch")
        loss = task_loss(solo(inputs), batch)[0]
        grads = torch.autograd.grad(loss, list(solo.parameters()))
        torch.testing.assert_close(total[index], loss, rtol=0, atol=1e-12)
        torch.testing.assert_close(module.stacked.flat.grad[index], torch.cat([g.flatten() for g in grads]),
                                   rtol=0, atol=1e-12)


# a routed hybrid LM, tiny (vmap-able in both modes), routing shares named gdn / softmax
HYBRID = ["experiment=hybrid_dynamic", "size=cpu", "model.layers=[gdn,routed,attn]",
          "data.seq_len=16", "data.batch_size=4", "data.eval_windows=4", "model.d_model=16", "model.n_heads=2",
          "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=3",
          "optimizer.warmup_steps=2", "callbacks.token_routing=null", "callbacks.temperature=null",
          "callbacks.progress.refresh_seconds=1000"]


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_a_hybrid_lm_member_logs_the_metric_names_of_its_solo_run(tmp_path, one_thread, mode):
    """The solo module and the ensemble module run one step function (lightning_modules.step): the same metric names,
    among them the routed layer's shares under the net's own option names (once `head_0` / `head_1` in an
    ensemble, `gdn` / `softmax` solo). Sparse routing, whose shapes no longer follow the data, trains in an
    ensemble too (the engine refused it while it padded to each batch's count), and logs its overflow."""
    overrides = [*HYBRID, f"model.routing_mode={mode}"]
    solo_dir = tmp_path / "solo"
    run_quietly(overrides, solo_dir)
    members = [Member(cfg := compose_config([*overrides, f"seed={seed}"], output_dir=tmp_path / "ensemble" / str(seed)),
                      tmp_path / "ensemble" / str(seed), [f"seed={seed}"],
                      [build(node, f"logger.{key}") for key, node in cfg.logger.items() if node]) for seed in (0, 1)]
    summaries = run_ensemble(members)
    member_dir = members[0].out
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    names = lambda run_dir: {key for row in reproducible_rows(run_dir) for key, value in row.items() if value}  # noqa
    solo, member = names(solo_dir), names(member_dir)
    assert member == solo
    assert {"routing/share/layer_1/gdn", "routing/share/layer_1/softmax", "routing/entropy/layer_1"} <= member
    assert not any(name.startswith("routing/share/") and "head_" in name for name in member)
    assert ("routing/overflow/layer_1" in member) == (mode == "sparse")


def test_a_vmapped_step_of_sparse_routing_gives_each_member_its_solo_numbers(one_thread):
    """Each member's loss and gradient in the ensemble's step (member_step under StackedNets.vmap) are those of its
    net alone, with sparse routing at a capacity some tokens overflow (blocks of 4 positions, 1 softmax slot
    each). Float64, eval mode: each member routes by its own argmax, not by a random draw."""
    vocab, length = 7, 10

    def sparse_net(seed):
        torch.manual_seed(seed)
        return HybridLM(vocab, vocab, length, layers=["gdn", "routed", "attn"], d_model=8,
                        gdn=partial(GatedDeltaNet, n_heads=2, chunk_size=4), attn=partial(SoftmaxAttention, n_heads=2),
                        routing_mode="sparse", routing_block=4, routing_capacity_factor=0.5).double().eval()

    generator = torch.Generator().manual_seed(0)
    inputs, targets = (torch.randint(0, vocab, (5, length), generator=generator) for _ in range(2))
    batch = Batch(inputs, targets, torch.ones(5, length, dtype=torch.float64), torch.ones(5, length, dtype=torch.bool),
                  torch.zeros(5, dtype=torch.long))
    module = EnsembleModule([sparse_net(seed) for seed in range(2)], TaskSpec(num_classes=vocab, vocab_size=vocab,
                                                                              seq_len=length),
                            [AdamWRecipe()] * 2, [{}, {}], None, [])
    total, _ = module.stacked.vmap(lambda row, w, b: module.member_step(row, w, b, False), module.reg_weights(),
                                   batch, in_dims=(0, None))
    total.sum().backward()
    overflowed = []
    for index in range(2):
        solo = sparse_net(index)
        output = solo(inputs)
        overflowed.append(output.aux["layer_1/mixer/overflow"].item())
        grads = torch.autograd.grad(task_loss(output, batch)[0], list(solo.parameters()))
        torch.testing.assert_close(total[index], task_loss(output, batch)[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(module.stacked.flat.grad[index], torch.cat([g.flatten() for g in grads]),
                                   rtol=0, atol=1e-12)
    assert max(overflowed) > 0  # the capacity was binding for at least one member


@pytest.mark.parametrize("override, key", [
    ("callbacks=diagnostics", "callbacks.grokking_curves"),
    ("regularizer=spectral", "regularizer.spectral"),
    ("ckpt_path=/tmp/x.ckpt", "ckpt_path"),
    # one loss scaler for all members: one member's overflow would skip every member's step
    ("trainer.precision=16-mixed", "trainer.precision='16-mixed' is not allowed: expected 32-true or bf16-mixed"),
    ("ensemble.compile=yes", "ensemble.compile='yes' is not allowed: expected auto, true or false"),
])
def test_what_an_ensemble_cannot_honour_is_refused_by_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_ensemble(tmp_path, [override], [["seed=0"], ["seed=1"]])


def test_launcher_packs_a_multirun_into_ensembles_the_analysis_reads(tmp_path):
    sweep = tmp_path / "sweep"
    result = launch_cli(["-m", *SMALL, "data.p=11,13", "seed=0,1", "optimizer.weight_decay=0.5",
                         "hydra/launcher=ensemble", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [read_json(sweep / str(job) / "summary.json") for job in range(4)]
    assert [s["status"] for s in summaries] == ["completed"] * 4
    assert [s["ensemble"]["size"] for s in summaries] == [2] * 4  # one ensemble per prime
    for job, summary in enumerate(summaries):
        assert (sweep / str(job) / ".hydra" / "overrides.yaml").is_file()
        assert "optimizer.weight_decay=0.5" in summary["overrides"] and summary["steps"] == 40
    table = load_sweep(sweep)
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    assert sorted(zip(table["data.p"], table["seed"])) == [(11, 0), (11, 1), (13, 0), (13, 1)]


def test_ensemble_members_are_their_own_wandb_runs_in_the_sweep_group(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no W&B credentials: offline
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    result = launch_cli(["-m", *SMALL, "logger=wandb", "seed=0,1", "hydra/launcher=ensemble",
                         f"hydra.sweep.dir={tmp_path}/lam"], cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [read_json(tmp_path / "lam" / str(job) / "summary.json")["wandb"] for job in (0, 1)]
    assert runs[0]["id"] != runs[1]["id"] and runs[0]["group"] == runs[1]["group"] == "mlp_grok/lam"
    assert "seed=0" in runs[0]["tags"] and "seed=1" in runs[1]["tags"]
    for job in (0, 1):  # one offline W&B run per member, each ended
        (offline,) = (tmp_path / "lam" / str(job) / "wandb").glob("offline-run-*")
        assert any(offline.glob("*.wandb"))


@pytest.mark.usefixtures("compile_cache_of_this_kernel_set")
@pytest.mark.rounding
@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_the_compiled_stacked_step_is_the_eager_one(one_thread, kind):
    """`ensemble.compile=true` (torch.compile of the vmapped step, the default on a GPU) against the eager step, on a
    CPU in float64 from identical weights: the same totals, logged metrics and per-member gradients. Only the order
    of a few float64 roundings may differ (fused reductions): measured <= 1e-15 on AVX-512 and
    ATEN_CPU_CAPABILITY=default, so 1e-10 leaves room and still catches a term lost or a member's row mixed up."""
    vocab, length = 7, 4

    def net(seed):
        torch.manual_seed(seed)
        if kind == "mlp":
            return OneHotMLP(vocab * length, vocab, hidden_dim=16, n_hidden=2).double()
        return Transformer(vocab, vocab, length, n_layers=1, d_model=8, mixer=partial(SoftmaxAttention, n_heads=2),
                           ffn=MLPFFN).double()

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, vocab, (6, length), generator=generator)
    if kind == "mlp":
        one_hot = torch.nn.functional.one_hot(inputs, vocab).flatten(1).double()
        batch = Batch(one_hot, torch.randint(0, vocab, (6, 1), generator=generator),
                      torch.ones(6, 1, dtype=torch.float64), torch.ones(6, 1, dtype=torch.bool),
                      torch.zeros(6, dtype=torch.long))
    else:
        batch = Batch(inputs, torch.randint(0, vocab, (6, length), generator=generator),
                      torch.ones(6, length, dtype=torch.float64), torch.ones(6, length, dtype=torch.bool),
                      torch.zeros(6, dtype=torch.long))
    results = []
    for compiled in (False, True):
        module = EnsembleModule([net(seed) for seed in range(3)], TaskSpec(num_classes=vocab, vocab_size=vocab,
                                seq_len=length), [AdamWRecipe()] * 3, [{}, {}, {}], None, [], compile=compiled)
        module.prepare_step(torch.device("cpu"))
        assert module.compiled is compiled
        total, metrics = module._step(module.reg_weights(), batch, True)
        (total * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
        results.append((total.detach(), {k: v.detach() for k, v in metrics.items()}, module.stacked.flat.grad.clone()))
    (eager_total, eager_metrics, eager_grad), (total, metrics, grad) = results
    assert metrics.keys() == eager_metrics.keys() and "loss" in "".join(metrics)
    torch.testing.assert_close(total, eager_total, rtol=1e-10, atol=1e-10)
    for key, value in eager_metrics.items():
        torch.testing.assert_close(metrics[key], value, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-10, atol=1e-10)
    assert not torch.equal(grad[0], grad[1])  # each member its own gradient

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from core.output import NetOutput
from datamodules import ModularArithmetic
from lightning_modules import AdamWRecipe, TaskModule
from lightning_modules.answers import task_loss
from tests.nets.helpers import transformer


def module_for(dm):
    torch.manual_seed(0)
    s = dm.spec
    net = transformer(vocab_size=s.vocab_size, num_classes=s.num_classes, seq_len=s.seq_len, n_layers=1,
                      n_heads=2, d_model=16)
    return TaskModule(net, s, AdamWRecipe())


def test_answer_only_loss_is_cross_entropy_at_the_answer_position():
    dm = ModularArithmetic(p=7, format="sequence", loss_on="answer")
    module, batch = module_for(dm), dm.splits["train"]
    logits = module.net(batch.inputs).logits
    loss, aligned = task_loss(NetOutput(logits), batch)
    expected = F.cross_entropy(logits[:, 4], batch.targets[:, 4])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(aligned, logits)
    assert batch.answer_mask.nonzero()[:, 1].unique().tolist() == [4]  # accuracy is read at the answer only


def test_all_positions_loss_is_the_mean_over_seven_positions():
    dm = ModularArithmetic(p=7, format="sequence", loss_on="all")
    module, batch = module_for(dm), dm.splits["train"]
    logits = module.net(batch.inputs).logits
    loss, _ = task_loss(NetOutput(logits), batch)
    per_position = [F.cross_entropy(logits[:, t], batch.targets[:, t]) for t in range(7)]
    torch.testing.assert_close(loss, torch.stack(per_position).mean())


def test_token_task_reads_the_last_position():
    dm = ModularArithmetic(p=7, format="tokens")
    module, batch = module_for(dm), dm.splits["val"]
    logits = module.net(batch.inputs).logits
    loss, _ = task_loss(NetOutput(logits), batch)
    torch.testing.assert_close(loss, F.cross_entropy(logits[:, -1], batch.targets[:, 0]))
    result = module.evaluate([batch])
    expected_acc = (logits[:, -1].argmax(-1) == batch.targets[:, 0]).float().mean().item()
    assert result["acc"] == expected_acc and abs(result["loss"] - loss.item()) < 1e-6


def test_multi_op_routed_run_logs_head_usage_per_operation(run_config):
    import csv

    _, run_dir = run_config(["experiment=routed_multi_op", "data.p=7", "model.n_layers=1", "model.d_model=16",
                             "trainer.max_steps=10"])
    with open(run_dir / "metrics.csv") as f:
        row = next(r for r in csv.DictReader(f) if r.get("routing/entropy/layer_0"))
    for op in ("add", "mul"):
        usage = [float(row[f"routing/usage/layer_0/{op}/head_{j}"]) for j in range(4)]
        assert abs(sum(usage) - 1) < 1e-5  # mean routing weights of that operation's examples
    assert "val/acc/add" in row and "val/acc/mul" in row  # per-operation validation accuracy


def test_dropped_assignments_of_a_mixture_of_experts_are_logged_by_layer():
    from lightning_modules.step import structure_metrics

    output = NetOutput(torch.zeros(2, 3), aux={"layer_0/ffn/dropped": torch.tensor(0.25),
                                               "layer_0/ffn/routing": torch.full((2, 4), 0.25)})
    metrics = structure_metrics(output, torch.zeros(2, dtype=torch.long), {})
    assert metrics["moe/dropped/layer_0/ffn"] == 0.25
    assert [metrics[f"routing/usage/layer_0/head_{j}"].item() for j in range(4)] == [0.25] * 4


def test_routers_are_named_by_their_layer_and_hard_choices_give_token_shares():
    from lightning_modules.step import structure_metrics

    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]])  # (B=1, T=4, 2)
    choices = torch.tensor([[[0], [1], [1], [1]]])  # 3 of 4 tokens to option 1 (not the argmax of token 2)
    output = NetOutput(torch.zeros(1, 4, 5), aux={"layer_2/mixer/routing": probs,
                                                  "layer_2/mixer/expert_index": choices})
    metrics = structure_metrics(output, torch.zeros(1, dtype=torch.long), {}, options=("gdn", "softmax"))
    assert metrics["routing/share/layer_2/gdn"].item() == 0.25
    assert metrics["routing/share/layer_2/softmax"].item() == 0.75
    assert metrics["routing/usage/layer_2/head_1"].item() == pytest.approx(0.5)
    assert "routing/entropy/layer_2" in metrics and "routing/entropy/layer_0" not in metrics


class ClipProbe(pl.Callback):
    """Per step: the gradient norm before clipping (callbacks run before Lightning clips) and after it (an optimiser
    step post-hook: the closure that clips runs inside `optimizer.step()`, and the update leaves the gradients);
    at the end whether the AdamW was the fused one and whether the NaN guard deferred its check."""

    seen: dict = {}

    def on_train_start(self, trainer, pl_module):
        ClipProbe.seen = {"before": [], "after": []}
        params = list(pl_module.parameters())

        def norm():
            return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()

        trainer.optimizers[0].register_step_post_hook(lambda *args: ClipProbe.seen["after"].append(norm()))
        self.norm = norm

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        ClipProbe.seen["before"].append(self.norm())

    def on_train_end(self, trainer, pl_module):
        from callbacks import FiniteLossGuard

        ClipProbe.seen["fused"] = bool(trainer.optimizers[0].defaults.get("fused"))
        ClipProbe.seen["deferred"] = [c._deferred for c in trainer.callbacks if isinstance(c, FiniteLossGuard)]


def test_bf16_with_clipping_keeps_the_fused_adamw_clips_itself_and_defers_the_nan_guard(run_config):
    # the LM recipe: bf16-mixed has no loss scaler, so nothing stands between clipping and the fused optimiser;
    # the NaN guard then reads the loss only on logging steps (told to defer as it does on a GPU)
    clip = 1e-3  # far below this MLP's gradient norms (~0.1-1), so every step is clipped
    summary, _ = run_config(["trainer.precision=bf16-mixed", f"trainer.gradient_clip_val={clip}",
                             "trainer.max_steps=6", "callbacks.finite_loss.defer=true",
                             "+callbacks.clip_probe._target_=tests.lightning_modules.test_task_module.ClipProbe"])
    assert summary["status"] == "completed", summary.get("error")
    seen = ClipProbe.seen
    assert seen["fused"] and seen["deferred"] == [True]
    assert len(seen["before"]) == len(seen["after"]) == 6 and min(seen["before"]) > 10 * clip
    # clip_grad_norm_ scales by clip / (norm + 1e-6): the norm after it is the clip to 1e-5 for norms above 0.1,
    # with float32's rounding of the norm far below that
    assert seen["after"] == pytest.approx([clip] * 6, rel=1e-4)


def test_only_a_loss_scaler_with_clipping_gives_up_the_fused_adamw():
    # 16-mixed: Lightning unscales before it clips, which an optimiser that unscales inside its step cannot take
    from types import SimpleNamespace

    dm = ModularArithmetic(p=5, format="tokens")
    for precision, scaler, clip, fused in (("16-mixed", object(), 1.0, False), ("16-mixed", object(), None, True),
                                           ("bf16-mixed", None, 1.0, True), ("32-true", None, 1.0, True)):
        module = module_for(dm)
        module.trainer = SimpleNamespace(precision=precision, precision_plugin=SimpleNamespace(scaler=scaler),
                                         gradient_clip_val=clip)
        assert bool(module.configure_optimizers()["optimizer"].defaults.get("fused")) == fused, (precision, clip)


@pytest.mark.parametrize("shape", [(7, 4), (7, 3, 4)], ids=["one_hot_net", "token_net"])
def test_head_usage_per_operation_is_the_mean_over_that_operation_s_examples(shape):
    """Planted routing weights, each operation's examples leaning to another head: every group's usage is the mean
    over its own examples (and their positions), computed here example by example."""
    from lightning_modules.step import structure_metrics

    group = torch.tensor([0, 1, 1, 0, 2, 1, 0])
    leaning = F.one_hot(torch.tensor([0, 3, 1])[group], 4).double() * 3.0  # add -> head 0, mul -> 3, sub -> 1
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = torch.softmax(noise + (leaning if len(shape) == 2 else leaning[:, None]), -1)
    names = {0: "add", 1: "mul", 2: "sub"}
    metrics = structure_metrics(NetOutput(torch.zeros(7, 5), aux={"layer_1/ffn/routing": weights}), group, names)
    rows = weights.reshape(7, -1, 4)  # (examples, positions, heads)
    for index, name in names.items():
        mine = [rows[b, t] for b in range(7) if group[b] == index for t in range(rows.shape[1])]
        expected = sum(mine) / len(mine)
        logged = torch.stack([metrics[f"routing/usage/layer_1/{name}/head_{j}"] for j in range(4)])
        torch.testing.assert_close(logged, expected, rtol=1e-12, atol=0)
        assert logged.argmax() == [0, 3, 1][index]  # the planted leaning shows: the groups' usages differ

"""Optimiser statistics: AdamW stepped by hand against the formulas written out in plain floats, the hook timing
in a real Lightning fit (weights before the step, the lr that step used), and a real run with resume."""
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from callbacks.diagnostics.optimizer_stats import OptimizerStats, group_name, group_stats
from tests.conftest import metrics_rows

pytestmark = pytest.mark.usefixtures("one_thread")


LR, BETA1, BETA2, EPS, WD = 0.01, 0.9, 0.98, 1e-8, 0.5
W0 = [1.0, -2.0, 0.5]
GRADS = [[0.1, -0.3, 0.2], [0.2, 0.1, -0.4]]


def norm(xs):
    return math.sqrt(sum(x * x for x in xs))


def adamw_by_hand(w, grads, wd):
    """Plain-float AdamW (decoupled decay): the weights before the last step, after it, and m, v after it."""
    m, v = [0.0] * len(w), [0.0] * len(w)
    before = list(w)
    for t, g in enumerate(grads, start=1):
        before = list(w)
        m = [BETA1 * mi + (1 - BETA1) * gi for mi, gi in zip(m, g)]
        v = [BETA2 * vi + (1 - BETA2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - BETA1**t) for mi in m]
        v_hat = [vi / (1 - BETA2**t) for vi in v]
        w = [wi * (1 - LR * wd) - LR * mh / (math.sqrt(vh) + EPS) for wi, mh, vh in zip(w, m_hat, v_hat)]
    return before, w, m, v


def test_group_stats_after_two_hand_checked_adamw_steps():
    decayed = nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    exempt = nn.Parameter(torch.tensor(W0, dtype=torch.float64) * 3)
    idle = nn.Parameter(torch.ones(2, dtype=torch.float64))  # never gets a gradient: no Adam state
    optimizer = torch.optim.AdamW([{"name": "decay", "params": [decayed], "weight_decay": WD},
                                   {"name": "no_decay", "params": [exempt, idle], "weight_decay": 0.0}],
                                  lr=LR, betas=(BETA1, BETA2), eps=EPS)
    for g in GRADS:
        before = [[p.detach().clone() for p in group["params"]] for group in optimizer.param_groups]
        decayed.grad = torch.tensor(g, dtype=torch.float64)
        exempt.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()

    # the idle parameter's weights (two ones) count in its group's ||w||, but it has no step sizes
    for group, snapshot, w0, wd, idle_sq in zip(optimizer.param_groups, before, (W0, [3 * x for x in W0]),
                                                 (WD, 0.0), (0.0, 2.0)):
        w_before, w_after, m, v = adamw_by_hand(w0, GRADS, wd)
        v_hat = [vi / (1 - BETA2**2) for vi in v]
        sizes = sorted(LR / (math.sqrt(vh) + EPS) for vh in v_hat)
        delta = [a - b for a, b in zip(w_after, w_before)]
        stats = group_stats(group, optimizer.state, snapshot)
        assert stats["update_ratio"] == pytest.approx(norm(delta) / math.sqrt(norm(w_before) ** 2 + idle_sq), rel=1e-9)
        assert stats["step_size_mean"] == pytest.approx(sum(sizes) / 3, rel=1e-9)
        assert stats["step_size_median"] == pytest.approx(sizes[1], rel=1e-9)
        assert stats["step_size_max"] == pytest.approx(sizes[2], rel=1e-9)
        assert stats["exp_avg_norm"] == pytest.approx(norm(m), rel=1e-9)
    assert "update_ratio" not in group_stats(optimizer.param_groups[0], optimizer.state)  # no snapshot given


def test_values_worked_out_for_the_first_step():
    # step 1: m̂ = g, v̂ = g², so each weight moves by lr·(sign(g) + wd·w) and every step size is lr/(|g|+eps)
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    optimizer = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.99), eps=0.0, weight_decay=0.0)
    before = [w.detach().clone()]
    w.grad = torch.tensor([0.5, -2.0], dtype=torch.float64)
    optimizer.step()
    stats = group_stats(optimizer.param_groups[0], optimizer.state, before)
    assert stats["update_ratio"] == pytest.approx(0.1 * math.sqrt(2) / 5.0)  # ||(0.1, 0.1)|| / ||(3, 4)||
    assert stats["step_size_max"] == pytest.approx(0.1 / 0.5) and stats["step_size_median"] == pytest.approx(0.1 / 2.0)
    assert stats["step_size_mean"] == pytest.approx((0.2 + 0.05) / 2)
    assert stats["exp_avg_norm"] == pytest.approx(0.1 * math.sqrt(0.25 + 4.0))  # m = (1-β1) g


def test_groups_are_named_by_their_name_or_index():
    assert group_name({"name": "decay"}, 0) == "decay"
    assert group_name({"params": []}, 2) == "group_2"


class ConstantGradient(pl.LightningModule):
    """loss = c·w: the gradient is c at every step, so Adam's v̂ = c² and m̂ = c exactly."""

    def __init__(self, lr0=0.01, wd=0.1):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
        self.c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        self.lr0, self.wd = lr0, wd

    def training_step(self, batch, batch_idx):
        return (self.c * self.w).sum()

    def train_dataloader(self):
        return [torch.zeros(1)] * 100

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW([self.w], lr=self.lr0, betas=(0.9, 0.98), eps=1e-8, weight_decay=self.wd)
        # the lr of step t (1-based) is lr0·t: a stats callback that read lr after the scheduler would be off
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: k + 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_in_a_fit_each_cadence_step_compares_with_the_weights_and_lr_of_that_very_step(tmp_path):
    module = ConstantGradient()
    callback = OptimizerStats(every_n_steps=2)
    trainer = pl.Trainer(max_steps=5, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path)
    trainer.fit(module)
    # steps 2 and 4 only: nothing at initialisation nor at the end (step 5 is off the cadence, nothing was copied)
    assert [h["step"] for h in callback.history] == [2, 4]
    c = [0.5, -1.0, 2.0]
    w, expected = [1.0, -2.0, 3.0], {}
    for t in range(1, 6):
        lr = 0.01 * t
        new = [wi * (1 - lr * 0.1) - lr * ci / (abs(ci) + 1e-8) for wi, ci in zip(w, c)]
        sizes = sorted(lr / (abs(ci) + 1e-8) for ci in c)
        expected[t] = {"update_ratio": norm([a - b for a, b in zip(new, w)]) / norm(w),
                       "step_size_mean": sum(sizes) / 3, "step_size_median": sizes[1], "step_size_max": sizes[2]}
        w = new
    for h in callback.history:
        for what, value in expected[h["step"]].items():
            assert h[f"optim/group_0/{what}"] == pytest.approx(value, rel=1e-6), (h["step"], what)
    assert torch.allclose(module.w.detach(), torch.tensor(w, dtype=torch.float64))
    assert (tmp_path / "plots" / "optim_history.png").is_file()


OPTIM = "+callbacks.optimizer_stats={_target_: callbacks.diagnostics.optimizer_stats.OptimizerStats, every_n_steps: 10}"


def test_a_run_logs_per_group_stats_that_agree_with_its_checkpoint_and_survive_resume(run_config):
    common = ["threads=1", "callbacks.checkpoint.every_n_train_steps=10", OPTIM]
    _, first = run_config([*common, "trainer.max_steps=20"], name="first")
    _, run_dir = run_config([*common, f"ckpt_path={first}/checkpoints/last.ckpt"], name="resumed")
    assert (first / "plots" / "optim_history.png").is_file() and (run_dir / "plots" / "optim_history.png").is_file()

    rows = {int(r["step"]): r for r in metrics_rows(first) + metrics_rows(run_dir)
               if r.get("optim/decay/update_ratio")}
    assert sorted(rows) == [9, 19, 29, 39]  # after steps 10, 20, 30, 40 (rows are steps done - 1)
    whats = ("update_ratio", "step_size_mean", "step_size_median", "step_size_max", "exp_avg_norm")
    for row in rows.values():
        for group in ("decay", "no_decay"):  # the MLP's weights and its biases
            values = {w: float(row[f"optim/{group}/{w}"]) for w in whats}
            assert all(v > 0 and math.isfinite(v) for v in values.values())
            assert max(values["step_size_median"], values["step_size_mean"]) <= values["step_size_max"]

    # at step 40 the logged numbers are those of the optimiser state saved with the weights at step 40
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 40
    opt = ckpt["optimizer_states"][0]
    for group in opt["param_groups"]:
        states = [opt["state"][i] for i in group["params"]]
        beta2, eps, lr = group["betas"][1], group["eps"], group["lr"]  # warmup is over: lr is the same before and after
        sizes = torch.cat([(lr / ((s["exp_avg_sq"] / (1 - beta2 ** float(s["step"]))).sqrt() + eps)).flatten()
                           for s in states])
        m = torch.cat([s["exp_avg"].flatten() for s in states])
        assert float(rows[39][f"optim/{group['name']}/step_size_mean"]) == pytest.approx(float(sizes.mean()), rel=1e-5)
        assert float(rows[39][f"optim/{group['name']}/exp_avg_norm"]) == pytest.approx(float(m.norm()), rel=1e-5)

    (state,) = [v for k, v in ckpt["callbacks"].items() if "OptimizerStats" in k]
    assert [h["step"] for h in state["history"]] == [10, 20, 30, 40]

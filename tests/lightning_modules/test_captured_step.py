"""The captured step (`module.cuda_graph`) around its graph, on a CPU: `EagerReplayStep` (tests/helpers.py) stands in
for the CUDA graph and the device check is lifted, so a run goes through what a captured run on a GPU goes through
(the decision at fit start, capture after the warmup, the replay inside Lightning's automatic optimisation, what it
logs, the lr schedule, the in-graph NaN guard, checkpoints, resume) but the graph itself, which the GPU lane tests
(tests/gpu/test_cuda_lane.py)."""
import pytest
import torch

import lightning_modules.task_module as task_module
from core.errors import ConfigError
from lightning_modules.cuda_graph import step_setup_blocker
from nets import MLP
from tests.conftest import SMALL, assert_resume_ends_as_straight_run, metrics_rows, run_quietly
from tests.helpers import EagerReplayStep

COMMON = ["data.p=23", "trainer.max_steps=60"]  # mlp_grok's warmup of 10 steps: captured at step 10


@pytest.fixture
def replay_on_cpu(monkeypatch):
    """A CPU counts as a CUDA device for the decision, and the capture is `EagerReplayStep`."""
    monkeypatch.setattr(task_module, "CapturedStep", EagerReplayStep)
    monkeypatch.setattr(task_module, "capture_blocker",
                        lambda trainer, module: step_setup_blocker(trainer, module, trainer.datamodule))


def logged(run_dir):
    return {(int(row["step"]), key): float(value) for row in metrics_rows(run_dir)
            for key, value in row.items() if value and key not in ("step", "epoch") and not key.startswith("speed/")}


@pytest.fixture
def training_forwards(monkeypatch):
    """Counts the forwards of an MLP in training mode (a step's; evaluation runs in eval mode)."""
    counted = {"n": 0}
    forward = MLP.forward

    def counting(self, x):
        counted["n"] += self.training
        return forward(self, x)

    monkeypatch.setattr(MLP, "forward", counting)
    return counted


@pytest.mark.rounding
def test_a_captured_run_logs_and_ends_as_the_eager_run(run_config, replay_on_cpu, one_thread, training_forwards):
    eager, eager_dir = run_config([*COMMON, "module.cuda_graph=false"], name="eager")
    training_forwards["n"] = 0
    captured, captured_dir = run_config(COMMON, name="captured")  # auto: the default
    assert eager["cuda_graph"] == "eager (module.cuda_graph=false)" and captured["cuda_graph"] == "captured"
    assert EagerReplayStep.latest.replays == 60 - 10  # every step after the warmup was a replay
    assert training_forwards["n"] == 60  # and nothing else ran the step: one forward a step
    ours, theirs = logged(captured_dir), logged(eager_dir)
    # the same rows (training metrics on logging steps come from the replay's own forward), and the same numbers:
    # both arms run the same kernels on the same values (the eager steps through Lightning's clipping and torch's
    # fused AdamW, the replays through the same clipping and the same fused kernel), so they agree to float rounding
    # (measured: bitwise under AVX-512 and ATEN_CPU_CAPABILITY=default); 1e-6 relative leaves rounding room and still
    # catches an update applied twice, a skipped one or metrics from the wrong step (all >1e-3 here)
    assert ours.keys() == theirs.keys() and (59, "train/loss") in ours
    for cell, value in theirs.items():
        assert ours[cell] == pytest.approx(value, rel=1e-6, abs=1e-7), cell
    for key, value in eager["final"].items():
        assert captured["final"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert captured["steps"] == eager["steps"] == 60


def test_a_captured_run_stops_at_the_first_non_finite_loss_with_the_last_good_weights(run_config, replay_on_cpu,
                                                                                      one_thread):
    """The in-graph guard skips the bad step and every later one (they run until the next logging step, 40, reads
    the guard): the weights are those after step 30, as a run of 30 steps leaves them."""
    summary, run_dir = run_config([
        *COMMON, "+regularizer.boom._target_=tests.helpers.NaNSwitch", "+callbacks.flip._target_=tests.helpers.FlipToNaN",
        "+callbacks.flip.at=30", "callbacks.checkpoint.every_n_train_steps=20"])
    assert summary["cuda_graph"] == "captured"
    assert summary["status"] == "diverged" and summary["steps"] == 30 and "step 30" in summary["error"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 20
    _, good_dir = run_config([*COMMON, "trainer.max_steps=30"], name="good")
    good = torch.load(good_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    kept = torch.load(run_dir / summary["last_finite_weights"], weights_only=True)
    for name, tensor in kept.items():  # the same kernels on the same values: equal to rounding
        torch.testing.assert_close(tensor, good[f"net.{name}"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stop_at", [5, 20], ids=["before_the_capture", "after_it"])
def test_a_run_captured_after_a_resume_ends_as_the_straight_run(run_config, replay_on_cpu, one_thread, stop_at):
    """The step counter is Lightning's automatic one whether a step was eager or a replay, so a run stopped before
    or after the capture resumes, captures and ends as one that never stopped."""
    assert_resume_ends_as_straight_run(run_config, ["callbacks.checkpoint.every_n_train_steps=5"], steps=40,
                                       stop_at=stop_at)


def test_auto_on_a_cpu_runs_eager_says_nothing_and_records_why(tmp_path, one_thread):
    summary, printed = run_quietly([*SMALL, "trainer.accelerator=cpu"], tmp_path)
    assert summary["status"] == "completed"
    assert summary["cuda_graph"] == "eager (a cpu device: a captured step needs CUDA)"
    assert "CUDA graph" not in printed


def test_true_on_a_cpu_is_refused_by_key(run_config):
    with pytest.raises(ConfigError, match="module.cuda_graph=True is not allowed: expected auto or false with a cpu "
                                          "device: a captured step needs CUDA"):
        run_config(["module.cuda_graph=true", "trainer.accelerator=cpu"])


def test_a_bad_setting_is_refused_by_key(run_config):
    with pytest.raises(ConfigError, match="module.cuda_graph='sometimes' is not allowed: expected auto, true or false"):
        run_config(["module.cuda_graph=sometimes"])

"""The GPU lane (`make gpu-test`): every experiment family, resume, a multirun, reduced precision, the captured
CUDA-graph step and ensembles, on a CUDA device. Skipped where there is none."""
import math

import pytest
import torch

from tests.conftest import SMALL, assert_resume_ends_as_straight_run, launch_cli, metrics_rows, read_json
from tests.ensemble.test_ensemble import logged, train_ensemble

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPU = ["trainer.accelerator=gpu", "trainer.val_check_interval=50", "trainer.log_every_n_steps=50"]
FAMILIES = {
    "mlp": ["experiment=mlp_grok", "trainer.max_steps=200"],
    "transformer": ["experiment=transformer_grok", "trainer.max_steps=100"],
    "routed": ["experiment=routed_entropy", "trainer.max_steps=100"],
    "gated": ["experiment=least_action_gumbel", "trainer.max_steps=100"],
    "sequence": ["experiment=conditions_study", "conditions=r4", "trainer.max_steps=100"],
}


def assert_complete(summary, run_dir, steps):
    assert summary["status"] == "completed" and summary["steps"] == steps, summary.get("error")
    assert summary["device"].startswith("cuda")
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(summary["final"])
    assert all(math.isfinite(v) for v in summary["final"].values())
    assert "grok" in summary and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert read_json(run_dir / "summary.json")["final"] == summary["final"]
    assert any(row.get("val/acc") for row in metrics_rows(run_dir))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_runs_to_a_complete_summary_on_cuda(run_config, family):
    overrides = FAMILIES[family]
    summary, run_dir = run_config([*overrides, *GPU])
    assert_complete(summary, run_dir, int(overrides[-1].split("=")[1]))


def test_resume_on_cuda_ends_on_the_uninterrupted_metrics(run_config):
    assert_resume_ends_as_straight_run(run_config, [*GPU, "callbacks.checkpoint.every_n_train_steps=50"],
                                       steps=100, stop_at=50)


def test_a_two_job_multirun_on_cuda(tmp_path):
    result = launch_cli(["-m", *SMALL, "trainer.accelerator=gpu", "seed=0,1", f"hydra.sweep.dir={tmp_path}/s"],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in (0, 1):
        summary = read_json(tmp_path / "s" / str(job) / "summary.json")
        assert summary["status"] == "completed" and summary["device"].startswith("cuda")


@pytest.mark.parametrize("setting", ["trainer.precision=bf16-mixed", "matmul_precision=high"])
def test_reduced_precision_trains(run_config, setting):
    summary, run_dir = run_config(["experiment=mlp_grok", "trainer.max_steps=300", *GPU, setting])
    assert_complete(summary, run_dir, 300)
    assert summary["final"]["train/loss"] < 0.5 * math.log(97)  # it learns (chance is ln 97)
    # the final numbers come from a forward at the run's precision: the last validation saw the same weights
    # (only the logger's float32 could round them, rel <= 6e-8)
    last = [row for row in metrics_rows(run_dir) if row.get("val/loss")][-1]
    assert summary["final_precision"] == ("bf16-mixed" if setting == "trainer.precision=bf16-mixed" else "32-true")
    assert summary["final"]["val/loss"] == pytest.approx(float(last["val/loss"]), rel=1e-7)


@pytest.mark.parametrize("experiment", ["mlp_grok", "nanda_grok"])
def test_the_captured_step_trains_as_the_eager_step_does(run_config, experiment):
    """A plain run of the preset captures its step by default (module.cuda_graph=auto) and ends where the eager one
    does, to float rounding."""
    common = [f"experiment={experiment}", "trainer.max_steps=200", *GPU]
    eager, _ = run_config([*common, "module.cuda_graph=false"], name="eager")
    graphed, run_dir = run_config(common, name="graphed")
    assert_complete(graphed, run_dir, 200)
    assert graphed["cuda_graph"] == "captured" and eager["cuda_graph"] == "eager (module.cuda_graph=false)"
    for key, value in eager["final"].items():  # same maths, other kernel order: close, not bitwise
        assert graphed["final"][key] == pytest.approx(value, rel=2e-2, abs=2e-2), key
    rows = logged(run_dir)
    assert (199, "train/loss") in rows and (199, "val/acc") in rows


def test_the_captured_step_stops_at_the_first_non_finite_loss(run_config):
    summary, run_dir = run_config([
        "experiment=mlp_grok", "trainer.max_steps=200", *GPU, "module.cuda_graph=true",
        "+regularizer.boom._target_=tests.helpers.NaNSwitch", "+callbacks.flip._target_=tests.helpers.FlipToNaN",
        "+callbacks.flip.at=120", "callbacks.checkpoint.every_n_train_steps=100",
    ])
    assert summary["status"] == "diverged" and summary["steps"] == 120 and "step 120" in summary["error"]
    assert all(math.isfinite(v) for v in summary["final"].values())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 100


@pytest.mark.parametrize("compile, compiled", [("auto", True), ("false", False)])
def test_an_ensemble_on_cuda_matches_solo_runs(tmp_path, run_config, compile, compiled):
    """On CUDA an ensemble compiles its step and update by default (ensemble.compile=auto); compiled or not, its
    members log what their solo runs log."""
    per_member = [["seed=0"], ["seed=1", "optimizer.weight_decay=0.3"]]
    common = ["data.p=23", "trainer.max_steps=60", "trainer.accelerator=gpu"]
    summaries, dirs = train_ensemble(tmp_path, [*common, f"ensemble.compile={compile}"], per_member)
    for own, summary, member_dir in zip(per_member, summaries, dirs):
        solo, solo_dir = run_config([*common, *own], name="solo_" + own[-1])
        assert summary["status"] == solo["status"] == "completed" and summary["ensemble"]["device"].startswith("cuda")
        assert summary["ensemble"]["compiled"] is compiled
        theirs, ours = logged(solo_dir), logged(member_dir)
        assert ours.keys() == theirs.keys()
        for cell, value in theirs.items():
            assert ours[cell] == pytest.approx(value, rel=1e-3, abs=1e-4), cell


def test_an_ensemble_of_transformers_on_cuda(tmp_path):
    summaries, _ = train_ensemble(tmp_path, ["experiment=nanda_grok", "trainer.max_steps=200", *GPU],
                                  [[f"seed={seed}"] for seed in range(4)])
    assert [s["status"] for s in summaries] == ["completed"] * 4
    assert all(s["final"]["train/acc"] > 0.5 for s in summaries)  # memorising (a solo run: 0.99 by step 200)

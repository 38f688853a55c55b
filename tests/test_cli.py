"""`python launch.py` as a user runs it: overrides, help, errors, multirun (sequential and local_parallel)."""
import pytest

from tests.conftest import SMALL, launch_cli, metrics_rows, read_json

FAST = [*SMALL, "trainer.max_steps=20"]


def test_run_with_overrides_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = launch_cli([*FAST, "optimizer.weight_decay=0.5", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = read_json(out / "summary.json")
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert "optimizer.weight_decay=0.5" in summary["overrides"]
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "metrics.csv").is_file()
    assert f"run folder: {out}" in result.stdout and f"outputs in {out}" in result.stdout


def test_help_and_cfg_job(tmp_path):
    help_text = launch_cli(["--help"], cwd=tmp_path)
    assert help_text.returncode == 0 and "experiment: " in help_text.stdout and "mlp_grok" in help_text.stdout
    assert "\nsize: cpu, source\n" in help_text.stdout and "\nsize/transformer_grok: cpu\n" in help_text.stdout
    job = launch_cli(["--cfg", "job", "experiment=nanda_grok"], cwd=tmp_path)
    assert job.returncode == 0 and "activation: relu" in job.stdout and "p: 113" in job.stdout


def test_bad_value_is_one_clear_line_without_traceback(tmp_path):
    result = launch_cli([*FAST, "data.operations=[div]", "data.p=12", f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    assert result.returncode == 1
    assert "[grokking-lab] error: data.p=12 is not allowed: expected a prime for operation 'div'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("arg, expected", [
    ("model=resnet", "Could not find 'model/resnet'"),
    ("experiment=nope", "Could not find 'experiment/nope'"),
    ("data.prime=7", "[grokking-lab] error: data.prime is not a setting (settings under data: batch_size"),
])
def test_unknown_names_are_rejected_by_name(tmp_path, arg, expected):
    result = launch_cli([arg], cwd=tmp_path)
    assert result.returncode == 1 and expected in result.stderr


@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_multirun_leaves_one_complete_run_folder_per_job(tmp_path, launcher):
    """Hydra's sequential launcher, and `local_parallel` (Hydra's joblib launcher: a process per job, a job per
    core) as the README runs it, with threads=1."""
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    if launcher == "local_parallel":
        args += ["hydra/launcher=local_parallel", "threads=1"]
    result = launch_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"hydra/launcher: {launcher}" in (sweep / "multirun.yaml").read_text()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    summaries = [read_json(sweep / str(i) / "summary.json") for i in (0, 1)]
    assert [s["seed"] for s in summaries] == [0, 1]
    assert all(s["status"] == "completed" for s in summaries)
    assert summaries[0]["final"] != summaries[1]["final"]  # different inits
    for job, summary in enumerate(summaries):  # each folder complete: steps, validations, checkpoints, config
        assert summary["steps"] == 20 and f"seed={job}" in summary["overrides"]
        assert summary["checkpoints"] == ["checkpoints/best.ckpt", "checkpoints/last.ckpt"]
        assert [int(row["step"]) for row in metrics_rows(sweep / str(job)) if row.get("val/acc")] == [9, 19]
        assert (sweep / str(job) / ".hydra" / "config.yaml").is_file() and (sweep / str(job) / "init.pt").is_file()


def test_multirun_without_a_sweep_dir_goes_under_runs_experiment(tmp_path):
    result = launch_cli(["-m", "experiment=least_action", "model.n_layers=2", "data.p=7", "trainer.max_steps=5",
                         "trainer.val_check_interval=5", "seed=0,1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    sweeps = list((tmp_path / "runs" / "least_action").glob("multirun_*"))
    assert len(sweeps) == 1 and sorted(p.name for p in sweeps[0].iterdir() if p.is_dir()) == ["0", "1"]


def test_a_multirun_over_experiments_goes_under_a_folder_named_for_them(tmp_path):
    """Hydra names the sweep folder once, from the config composed without the swept values: a multirun over
    experiments used to land under the default experiment's folder (runs/mlp_grok/multirun_*)."""
    result = launch_cli(["-m", "experiment=least_action,least_action_gumbel", "model.hidden_dim=16", "data.p=7",
                         "trainer.max_steps=2", "trainer.val_check_interval=2", "threads=1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["least_action+least_action_gumbel"]
    (sweep,) = (tmp_path / "runs" / "least_action+least_action_gumbel").glob("multirun_*")
    summaries = [read_json(sweep / str(job) / "summary.json") for job in (0, 1)]
    assert [s["experiment"] for s in summaries] == ["least_action", "least_action_gumbel"]
    assert all(s["status"] == "completed" and s["steps"] == 2 for s in summaries)


def test_slurm_launcher_config_composes_without_a_cluster(tmp_path):
    result = launch_cli(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    assert "partition: gpu" in result.stdout and "gpus_per_node: 1" in result.stdout


def test_sweep_presets_expand_to_their_jobs(tmp_path):
    result = launch_cli(["-m", "sweep=[weight_decay,seeds]", "data.p=7", "trainer.max_steps=2",
                         "trainer.val_check_interval=2", f"hydra.sweep.dir={tmp_path}/s"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(int(p.name) for p in (tmp_path / "s").iterdir() if p.is_dir())
    assert jobs == list(range(12))  # 4 weight decays x 3 seeds
    overrides = {tuple(read_json(tmp_path / "s" / str(j) / "summary.json")["overrides"][:2]) for j in jobs}
    assert ("optimizer.weight_decay=2.0", "seed=2") in overrides and len(overrides) == 12


def test_a_misspelled_key_is_one_line_with_the_closest_keys(tmp_path):
    result = launch_cli(["data.pp=5"], cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("[grokking-lab] error: data.pp is not a setting; did you mean data.p?")

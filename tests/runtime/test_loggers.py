import pytest

from runtime.logs.loggers import resolve_wandb_mode, wandb_credentials_present


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    return tmp_path


def test_auto_mode_is_offline_without_credentials(no_credentials):
    assert not wandb_credentials_present() and resolve_wandb_mode("auto") == "offline"


def test_auto_mode_is_online_with_a_netrc_login(no_credentials):
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (no_credentials / ".netrc").chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"


def test_explicit_choices_win(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"


def test_offline_wandb_run_is_written_into_the_run_folder(run_config, no_credentials):
    summary, run_dir = run_config(["logger=wandb", "tags=[test]"])
    assert summary["status"] == "completed"
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and (run_dir / "metrics.csv").is_file()


def test_each_multirun_job_is_its_own_wandb_run_in_the_sweep_group(tmp_path, no_credentials):
    from tests.conftest import launch_cli, read_json

    args = ["-m", "logger=wandb", "data.p=7", "trainer.max_steps=10", "trainer.val_check_interval=5",
            "optimizer.weight_decay=0.5,1.0", f"hydra.sweep.dir={tmp_path}/lam_sweep"]
    result = launch_cli(args, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-2000:]
    runs = [read_json(tmp_path / "lam_sweep" / str(job) / "summary.json")["wandb"] for job in (0, 1)]
    assert runs[0]["id"] != runs[1]["id"] and runs[0]["offline"]
    assert runs[0]["group"] == runs[1]["group"] == "mlp_grok/lam_sweep"
    assert "optimizer.weight_decay=0.5" in runs[0]["tags"] and "optimizer.weight_decay=1.0" in runs[1]["tags"]
    assert "experiment=mlp_grok" in runs[0]["tags"] and runs[0]["job_type"] == "train"
    for job in (0, 1):  # one offline W&B run folder per job
        assert len(list((tmp_path / "lam_sweep" / str(job) / "wandb").glob("offline-run-*"))) == 1

import pytest

from runtime.loggers import resolve_wandb_mode, wandb_credentials_present


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

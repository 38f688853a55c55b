"""Top-level and trainer settings refused in one line before anything is built (runtime/config/checks.py)."""
import pytest
import torch

from core.errors import ConfigError
from runtime.config.checks import check_run_settings
from runtime.config.compose import compose_config

STEPS = "an integer >= 1"
DEVICES = "a positive integer, -1 (all), auto, or a list of device indices"
PRECISIONS = ("one of transformer-engine, transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, "
              "32-true, 64-true (or the short forms 64, 32, 16, bf16)")


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA or MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.val_check_interval=0", f"trainer.val_check_interval=0 is not allowed: expected {STEPS} (steps "
                                         "between validations)"),
        ("trainer.val_check_interval=0.5", f"trainer.val_check_interval=0.5 is not allowed: expected {STEPS} (steps "
                                           "between validations)"),
        ("trainer.log_every_n_steps=0", f"trainer.log_every_n_steps=0 is not allowed: expected {STEPS} (steps "
                                        "between logged train metrics)"),
        ("trainer.max_steps=0", f"trainer.max_steps=0 is not allowed: expected {STEPS} (the run's length)"),
        ("trainer.max_steps=1.5", f"trainer.max_steps=1.5 is not allowed: expected {STEPS} (the run's length)"),
        ("trainer.max_steps=-5", f"trainer.max_steps=-5 is not allowed: expected {STEPS} (the run's length)"),
        ("trainer.max_steps=true", f"trainer.max_steps=True is not allowed: expected {STEPS} (the run's length)"),
        ("threads=-1", "threads=-1 is not allowed: expected null (torch's default) or an integer >= 1"),
        ("threads=0", "threads=0 is not allowed: expected null (torch's default) or an integer >= 1"),
        ("matmul_precision=low", "matmul_precision='low' is not allowed: expected one of highest, high, medium"),
        ("trainer.accelerator=gpu", "trainer.accelerator='gpu' is not allowed: expected one of auto, cpu here "
                                    "(gpu needs a CUDA GPU and torch.cuda.is_available() is False)"),
        ("trainer=ddp", "trainer.accelerator='gpu' is not allowed: expected one of auto, cpu here "
                        "(gpu needs a CUDA GPU and torch.cuda.is_available() is False)"),
        ("trainer.accelerator=cuda", "trainer.accelerator='cuda' is not allowed: expected one of auto, cpu here "
                                     "(cuda needs a CUDA GPU and torch.cuda.is_available() is False)"),
        ("trainer.accelerator=mps", "trainer.accelerator='mps' is not allowed: expected one of auto, cpu here "
                                    "(mps needs an Apple GPU and torch.backends.mps.is_available() is False)"),
        ("trainer.accelerator=gpus", "trainer.accelerator='gpus' is not allowed: expected one of auto, cpu"),
        ("trainer.devices=0", f"trainer.devices=0 is not allowed: expected {DEVICES}"),
        ("trainer.devices=-2", f"trainer.devices=-2 is not allowed: expected {DEVICES}"),
        ("trainer.devices=1.5", f"trainer.devices=1.5 is not allowed: expected {DEVICES}"),
        ("trainer.devices=[]", f"trainer.devices=[] is not allowed: expected {DEVICES}"),
        ("trainer.precision=bf16-mix", f"trainer.precision='bf16-mix' is not allowed: expected {PRECISIONS}"),
        ("trainer.precision=32.0", f"trainer.precision=32.0 is not allowed: expected {PRECISIONS}"),
        ("seed=1.5", "seed=1.5 is not allowed: expected an integer"),
        ("seed=true", "seed=True is not allowed: expected an integer"),
        ("init_scale=0", "init_scale=0 is not allowed: expected a number > 0 (1.0 = as built)"),
        ("init_scale=-0.5", "init_scale=-0.5 is not allowed: expected a number > 0 (1.0 = as built)"),
        ("init_scale=big", "init_scale='big' is not allowed: expected a number > 0 (1.0 = as built)"),
    ],
)
def test_bad_setting_is_refused_in_one_line_naming_it(no_gpu, override, message):
    with pytest.raises(ConfigError) as info:
        check_run_settings(compose_config([override]))
    assert str(info.value) == message


@pytest.mark.parametrize("overrides", [
    [], ["threads=2"], ["matmul_precision=high"], ["trainer.devices=-1"], ["trainer.devices=auto"],
    ["trainer.devices=[0,1]"], ["trainer.devices='0,1'"], ["trainer.devices='2'"], ["trainer.precision=32"],
    ["trainer.precision=bf16"], ["trainer.precision=16-mixed"], ["trainer=cpu"], ["init_scale=2"],
    ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], ["experiment=transformer_grok", "size=cpu"],
])
def test_good_settings_pass(no_gpu, overrides):
    check_run_settings(compose_config(overrides))


def test_gpu_accelerators_pass_where_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    for accelerator in ("gpu", "cuda", "mps"):
        check_run_settings(compose_config([f"trainer.accelerator={accelerator}"]))
    with pytest.raises(ConfigError, match="expected one of auto, cpu, gpu, cuda, mps$"):
        check_run_settings(compose_config(["trainer.accelerator=tpu"]))

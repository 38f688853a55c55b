"""Progress: a redrawn bar on a terminal; in a log (stderr not a terminal), one plain line per interval."""
import re
from types import SimpleNamespace

import pytest
import torch

from callbacks.run.progress import StepProgressBar, format_duration

METRICS = {"train/loss": torch.tensor(0.0123), "train/acc": torch.tensor(1.0), "val/loss": torch.tensor(2.31),
           "val/acc": torch.tensor(0.45123), "other/metric": torch.tensor(7.0)}


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def fake_trainer(step=0, max_steps=1000, metrics=None):
    return SimpleNamespace(global_step=step, max_steps=max_steps, callback_metrics=dict(metrics or {}))


def train(bar, trainer, clock, steps, seconds_per_step):
    """Drive the callback as Lightning does: start, one batch end per optimiser step, end."""
    bar.on_train_start(trainer, None)
    for _ in range(steps):
        trainer.global_step += 1
        clock.now += seconds_per_step
        bar.on_train_batch_end(trainer, None, None, None, 0)
    bar.on_train_end(trainer, None)


def progress_lines(text):
    return [line for line in text.splitlines() if re.match(r"\[grokking-lab\] (step|training)", line)]


def test_plain_mode_prints_one_line_per_interval_with_speed_eta_and_metrics(capsys):
    clock, trainer = FakeClock(), fake_trainer(metrics=METRICS)
    bar = StepProgressBar(plain_every_seconds=30, plain=True, clock=clock)
    train(bar, trainer, clock, steps=100, seconds_per_step=1.0)  # 100 s: lines at 30, 60, 90 s
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = progress_lines(err)
    assert len(lines) == 5 and len(err.splitlines()) == 5  # start, 3 interval lines, end; nothing else
    assert lines[0] == "[grokking-lab] training from step 0/1000 (0%); a line every 30 s"
    metrics = " | train/loss 0.0123 train/acc 1.0000 val/loss 2.3100 val/acc 0.4512"
    assert lines[1] == "[grokking-lab] step 30/1000 (3%) 1.0 steps/s, eta 16m10s" + metrics
    assert lines[2].startswith("[grokking-lab] step 60/1000 (6%) 1.0 steps/s, eta 15m40s |")
    assert lines[3].startswith("[grokking-lab] step 90/1000 (9%) ")
    end = "[grokking-lab] training ended at step 100/1000 (10%): 100 steps in 1m40s (1.0 steps/s)"
    assert lines[4] == end + metrics
    assert "other/metric" not in err  # only the configured metrics, as on the bar


def test_steps_per_second_is_over_the_last_interval_not_since_start(capsys):
    clock, trainer = FakeClock(), fake_trainer(max_steps=10_000)
    bar = StepProgressBar(plain_every_seconds=10, plain=True, clock=clock)
    bar.on_train_start(trainer, None)
    for steps, seconds_per_step in ((10, 1.0), (80, 0.125)):  # 10 s slow, then 10 s fast
        for _ in range(steps):
            trainer.global_step += 1
            clock.now += seconds_per_step
            bar.on_train_batch_end(trainer, None, None, None, 0)
    lines = progress_lines(capsys.readouterr().err)
    assert lines[1].startswith("[grokking-lab] step 10/10000 (0%) 1.0 steps/s, eta 2h46m")
    assert lines[2].startswith("[grokking-lab] step 90/10000 (0%) 8.0 steps/s, eta 20m39s")
    assert len(lines) == 3 and "|" not in lines[1]  # no metrics logged yet: no metrics part


def test_resumed_run_starts_its_lines_at_the_checkpoint_step(capsys):
    clock, trainer = FakeClock(), fake_trainer(step=1200, max_steps=10_000)
    bar = StepProgressBar(plain_every_seconds=30, plain=True, clock=clock)
    train(bar, trainer, clock, steps=40, seconds_per_step=1.0)
    lines = progress_lines(capsys.readouterr().err)
    assert lines[0] == "[grokking-lab] training from step 1200/10000 (12%); a line every 30 s"
    assert lines[1].startswith("[grokking-lab] step 1230/10000 (12%) 1.0 steps/s")
    assert lines[-1] == "[grokking-lab] training ended at step 1240/10000 (12%): 40 steps in 40s (1.0 steps/s)"


def test_without_a_step_budget_lines_have_no_total_and_no_eta(capsys):
    clock, trainer = FakeClock(), fake_trainer(max_steps=-1)
    train(StepProgressBar(plain_every_seconds=5, plain=True, clock=clock), trainer, clock, steps=5, seconds_per_step=1)
    err = capsys.readouterr().err
    lines = progress_lines(err)
    assert lines[0].startswith("[grokking-lab] training from step 0;") and "eta" not in err
    assert lines[1] == "[grokking-lab] step 5 1.0 steps/s"


def test_terminal_detection_picks_the_bar_or_plain_lines(capsys, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("callbacks.run.progress.stderr_is_terminal", lambda: True)
    train(StepProgressBar(refresh_seconds=0, clock=clock), fake_trainer(), clock, steps=3, seconds_per_step=60)
    assert "\r" in capsys.readouterr().err  # tqdm's redraws
    monkeypatch.setattr("callbacks.run.progress.stderr_is_terminal", lambda: False)
    train(StepProgressBar(refresh_seconds=0, clock=clock), fake_trainer(), clock, steps=3, seconds_per_step=60)
    err = capsys.readouterr().err
    assert "\r" not in err and len(progress_lines(err)) == 5


def test_disabled_callback_prints_nothing(capsys):
    clock = FakeClock()
    bar = StepProgressBar(plain=True, clock=clock)
    bar.disable()
    train(bar, fake_trainer(), clock, steps=3, seconds_per_step=60)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (213, "3m33s"), (3600, "1h00m"), (7530, "2h05m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_real_run_in_a_log_writes_plain_lines_only(run_config, capsys):
    # `++` adds the keys whether or not conf/callbacks/default.yaml already has them
    summary, _ = run_config(["++callbacks.progress.plain=true", "++callbacks.progress.plain_every_seconds=0"])
    assert summary["status"] == "completed"
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = progress_lines(err)
    # interval 0: a line after each of the 40 steps, between the start and end lines
    assert len(lines) == 42 and lines[0].startswith("[grokking-lab] training from step 0/40 (0%)")
    assert lines[10].startswith("[grokking-lab] step 10/40 (25%)")
    assert lines[-1].startswith("[grokking-lab] training ended at step 40/40 (100%): 40 steps in ")
    assert re.search(r"train/loss \d+\.\d{4} train/acc \d\.\d{4} val/loss \d+\.\d{4} val/acc \d\.\d{4}$", lines[-1])

"""Gumbel temperature annealing: the schedule's values and its effect on a real gated run."""
import pandas as pd
import pytest

from callbacks.interventions.temperature import annealed_temperature


def test_schedules_hit_their_ends_and_midpoints():
    assert annealed_temperature(0, 1.0, 0.1, 100, "exponential") == pytest.approx(1.0)
    assert annealed_temperature(50, 1.0, 0.1, 100, "exponential") == pytest.approx(0.1**0.5)
    assert annealed_temperature(100, 1.0, 0.1, 100, "exponential") == pytest.approx(0.1)
    assert annealed_temperature(500, 1.0, 0.1, 100, "linear") == pytest.approx(0.1)
    assert annealed_temperature(25, 1.0, 0.2, 100, "linear") == pytest.approx(0.8)


def test_gumbel_run_anneals_the_net_temperature(run_config):
    summary, out = run_config(["experiment=least_action_gumbel", "model.n_layers=3", "model.hidden_dim=32",
                               "callbacks.temperature.end=0.25"])
    assert summary["status"] == "completed"
    temps = pd.read_csv(out / "metrics.csv")["gates/temperature"].dropna()
    # logged after steps 10, 20, 30, 40 of 40: T(s) = 0.25 ** (s / 40) at s = steps done - 1
    assert temps.tolist() == pytest.approx([0.25 ** (s / 40) for s in (9, 19, 29, 39)], rel=1e-5)


def test_annealing_needs_a_net_with_temperature(run_config):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="temperature"):
        run_config(["+callbacks.temperature._target_=callbacks.TemperatureAnnealing"])

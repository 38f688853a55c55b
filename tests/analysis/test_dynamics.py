"""The dynamics labels on planted curves, one per category, and their boundaries."""
import pytest

from analysis.dynamics import classify_dynamics


def curve(values, every=100):
    return [(every * (i + 1), v) for i, v in enumerate(values)]


FIT_EARLY = curve([0.5, 1.0] + [1.0] * 38)  # train acc 0.99 at step 200


@pytest.mark.parametrize("val, label", [
    ([0.0] * 10 + [0.3, 0.7, 0.97] + [1.0] * 27, "grokking"),           # generalised at 1300, 1100 after fitting
    ([0.4, 0.96] + [1.0] * 38, "instant generalisation"),               # generalised at 200, with the fit
    ([0.0] * 40, "memorisation"),
    ([0.1] * 30 + [0.6] * 10, "partial generalisation"),
    ([0.4, 0.96, 1.0, 0.2] + [1.0] * 36, "oscillation"),                # collapses after generalising
    ([0.2, 0.6] * 20, "oscillation"),                                   # swings around 0.5
])
def test_each_category(val, label):
    assert classify_dynamics(FIT_EARLY, curve(val)) == label


def test_never_fitting_is_not_fitted_and_delay_threshold_is_inclusive():
    assert classify_dynamics(curve([0.3] * 40), curve([0.0] * 40)) == "not fitted"
    # fit at 200; generalised at 400: the gap 200 meets max(1.0 * 200, 200)
    assert classify_dynamics(FIT_EARLY, curve([0.0, 0.0, 0.0, 0.96] + [1.0] * 36)) == "grokking"
    assert classify_dynamics(FIT_EARLY, curve([0.0, 0.0, 0.96] + [1.0] * 37)) == "instant generalisation"

"""Paired runs from identical initial weights, the init fingerprint, and Omnigrok's init scale."""
import pytest
import torch

from core.errors import ConfigError


def weights(run_dir):
    return torch.load(run_dir / "init.pt", weights_only=True)


def test_paired_arms_start_bit_identical_and_differ_only_in_their_setting(run_config):
    a, a_dir = run_config(["seed=1", "optimizer.weight_decay=0.0"], name="wd0")
    b, b_dir = run_config(["seed=7", f"init_from={a_dir}", "optimizer.weight_decay=1.0"], name="wd1")
    wa, wb = weights(a_dir), weights(b_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and a["init_fingerprint"] == b["init_fingerprint"]
    assert a["final"]["train/loss"] != b["final"]["train/loss"]  # the arms' own setting matters
    c, _ = run_config(["seed=7"], name="own_init")  # without init_from, seed 7 is another init
    assert c["init_fingerprint"] != a["init_fingerprint"]


def test_fingerprint_follows_the_weights(run_config):
    same_a, _ = run_config(["seed=3"], name="a")
    same_b, _ = run_config(["seed=3"], name="b")
    assert same_a["init_fingerprint"] == same_b["init_fingerprint"]


def test_init_scale_multiplies_every_initial_weight(run_config):
    _, plain = run_config(["seed=2"], name="plain")
    _, scaled = run_config(["seed=2", "init_scale=3.0"], name="scaled")
    wp, ws = weights(plain), weights(scaled)
    assert all(torch.allclose(3.0 * wp[k], ws[k]) for k in wp)


def test_init_from_another_architecture_is_refused(run_config):
    _, a_dir = run_config([], name="a")
    with pytest.raises(ConfigError, match="init_from"):
        run_config([f"init_from={a_dir}", "model.hidden_dim=64"], name="b")
    with pytest.raises(ConfigError, match="init_scale"):
        run_config(["init_scale=0"], name="c")


def test_init_from_a_file_that_is_not_saved_weights_is_refused_in_one_line(run_config, tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("step,train/loss\n0,2.3\n")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    for source in (csv, listed):
        with pytest.raises(ConfigError) as info:
            run_config([f"init_from={source}"], name=source.stem)
        assert str(info.value) == (f"init_from='{source}' is not allowed: expected a run folder holding init.pt, "
                                   "or a saved init file")

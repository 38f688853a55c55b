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


def test_save_torch_default_init_writes_pytorchs_default_init_the_same_for_the_same_seed(tmp_path):
    """The Grokfast reference code's init: every layer as `reset_parameters` leaves it (embeddings N(0, 1), linear
    weights within ±1/sqrt(fan_in)), seeded as a run is, so each arm of a seed starts from the same file."""
    import math

    from runtime.lifecycle.init_weights import save_torch_default_init

    overrides = ["experiment=grokfast_paper", "size=cpu", "data.p=13"]
    paths = [tmp_path / "a" / "seed0.pt", tmp_path / "b" / "seed0.pt", tmp_path / "seed1.pt"]
    for path, seed in zip(paths, (0, 0, 1)):
        save_torch_default_init(overrides, seed, path)
    a, b, other = (torch.load(path) for path in paths)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], other[k]) for k in a)
    embeddings = [v for k, v in a.items() if k.endswith("embedding.weight")]
    # 17 x 64 draws of N(0, 1): their std lies within 1 ± 0.3 for any seed (its spread is ~1 / sqrt(2 * 1088))
    assert len(embeddings) == 2 and 0.7 < float(embeddings[0].std()) < 1.3
    linears = [v for k, v in a.items() if k.endswith("weight") and v.dim() == 2 and not k.endswith("embedding.weight")]
    assert linears and all(float(v.abs().max()) <= 1 / math.sqrt(v.shape[1]) + 1e-6 for v in linears)

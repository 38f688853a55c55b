"""Fourier diagnostic: basis, spectra of planted embeddings, Gini, Nanda et al.'s progress measures, real runs."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from callbacks.diagnostics.fourier import (
    FourierSpectrum,
    excluded_loss,
    fourier_basis,
    frequency_energies,
    frequency_norms,
    gini,
    key_frequencies,
    key_frequency_component,
    restricted_loss,
    top_k_fraction,
)
from core.errors import ConfigError
from datamodules import ModularArithmetic
from nets import MLP, Transformer


def test_basis_is_orthonormal_and_ordered():
    for p in (7, 11, 12):
        basis = fourier_basis(p, dtype=torch.float64)
        assert basis.shape == (p, p)
        assert torch.allclose(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-12)
    x = torch.arange(11, dtype=torch.float64)
    basis = fourier_basis(11, dtype=torch.float64)
    assert torch.allclose(basis[0], torch.full((11,), 11 ** -0.5, dtype=torch.float64))
    assert torch.allclose(basis[5], torch.cos(2 * math.pi * 3 * x / 11) * math.sqrt(2 / 11))  # cos of k = 3
    assert torch.allclose(basis[6], torch.sin(2 * math.pi * 3 * x / 11) * math.sqrt(2 / 11))  # sin of k = 3


def planted_embedding(p=23):
    """Columns: 3 cos(w_3 x), 4 sin(w_7 x), 1 cos(w_3 x) + 2 sin(w_7 x)."""
    x = torch.arange(p, dtype=torch.float64)
    cos3, sin7 = torch.cos(2 * math.pi * 3 * x / p), torch.sin(2 * math.pi * 7 * x / p)
    return torch.stack([3 * cos3, 4 * sin7, cos3 + 2 * sin7], dim=1)


def test_planted_embedding_has_exactly_its_two_frequencies():
    p = 23
    norms = frequency_norms(planted_embedding(p))
    assert norms.shape == ((p + 1) // 2,)
    # |a cos(w x)|^2 over Z_p = a^2 p / 2: frequency 3 holds (9 + 1) p/2, frequency 7 (16 + 4) p/2
    expected = torch.zeros((p + 1) // 2, dtype=torch.float64)
    expected[3], expected[7] = math.sqrt(10 * p / 2), math.sqrt(20 * p / 2)
    assert torch.allclose(norms, expected, atol=1e-9)
    assert key_frequencies(norms, 2) == [7, 3]
    assert key_frequencies(norms, 1) == [7]
    assert top_k_fraction(norms, 1) == pytest.approx(20 / 30)
    assert top_k_fraction(norms, 2) == pytest.approx(1.0)
    # Gini of the energies of k = 1..11: nine zeros, then 10 (rank 10) and 20 (rank 11), in units of p/2
    assert gini(norms[1:].pow(2)) == pytest.approx(((2 * 10 - 12) * 10 + (2 * 11 - 12) * 20) / (11 * 30))


def test_constant_term_is_ranked_only_when_asked():
    p = 11
    embedding = torch.ones(p, 2) * 5 + planted_embedding(p)[:, :1] * 0.1  # 5 + 0.3 cos(w_3 x) in both columns
    norms = frequency_norms(embedding)
    assert key_frequencies(norms, 1) == [3]
    assert key_frequencies(norms, 1, include_constant=True) == [0]
    assert top_k_fraction(norms, 1) == pytest.approx(1.0)
    constant, cosine = 2 * 25 * p, 2 * 0.09 * p / 2  # energies: |5|^2 p and |0.3|^2 p/2, per column
    assert top_k_fraction(norms, 1, include_constant=True) == pytest.approx(constant / (constant + cosine))


def test_energies_match_numpy_fft_and_parseval():
    for p in (13, 10):
        embedding = torch.randn(p, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(p))
        spectrum = np.abs(np.fft.rfft(embedding.numpy(), axis=0)) ** 2 / p  # (p//2 + 1, 5)
        spectrum[1 : (p + 1) // 2] *= 2  # cos and sin of 0 < k < p/2 both live in X_k and X_{p-k}
        assert np.allclose(frequency_energies(embedding).numpy(), spectrum.sum(axis=1))
        assert frequency_energies(embedding).sum().item() == pytest.approx(embedding.pow(2).sum().item())


def test_gini_extremes():
    for n in (1, 2, 7, 50):
        one_hot = torch.zeros(n)
        one_hot[n // 2] = 3.0
        assert gini(one_hot) == pytest.approx(1 - 1 / n)
        assert gini(torch.full((n,), 0.4)) == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(((-2) * 1 + 0 * 2 + 2 * 3) / (3 * 6))
    assert gini(torch.zeros(4)) == 0.0


def planted_logits(p, frequencies, amplitude):
    """[a, b, c] = amplitude * sum_k cos(w_k(a + b - c)): Nanda et al.'s algorithm in pure form."""
    a = torch.arange(p, dtype=torch.float64)
    d = a[:, None, None] + a[None, :, None] - a[None, None, :]
    return amplitude * sum(torch.cos(2 * math.pi * k * d / p) for k in frequencies)


def addition_loss(logits, mask=None):
    p = logits.shape[0]
    a = torch.arange(p)
    targets = (a[:, None] + a[None, :]) % p
    mask = torch.ones(p, p, dtype=torch.bool) if mask is None else mask
    return F.cross_entropy(logits[mask], targets[mask]).item()


def test_progress_measures_on_planted_logits():
    p, keys = 23, [2, 5, 9]
    logits = planted_logits(p, keys, amplitude=3.0)
    train = torch.rand(p, p, generator=torch.Generator().manual_seed(0)) < 0.3
    # the logits are all key frequency: the restricted table is the table, nothing is left when they are removed
    assert restricted_loss(logits, keys) == pytest.approx(addition_loss(logits), rel=1e-9)
    assert addition_loss(logits) < 0.1  # (a sanity check that the planted table solves the task)
    assert excluded_loss(logits, keys, train) == pytest.approx(math.log(p), rel=1e-9)
    # with one key frequency left out, the restricted loss is worse and the excluded loss better than uniform
    assert restricted_loss(logits, keys[:2]) > addition_loss(logits) + 0.1
    assert excluded_loss(logits, keys[:2], train) < math.log(p) - 0.1
    # a per-answer bias (constant over the grid) is kept by the restricted loss and untouched by the projection
    bias = torch.randn(p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert restricted_loss(logits + bias, keys) == pytest.approx(addition_loss(logits + bias), rel=1e-9)
    # a weaker circuit in other frequencies: the excluded loss is exactly its loss, the restricted loss ignores it
    other = planted_logits(p, [1, 11], amplitude=0.5)
    assert excluded_loss(logits + other, keys, train) == pytest.approx(addition_loss(other, train), rel=1e-9)
    assert addition_loss(other, train) < math.log(p) - 0.3
    assert restricted_loss(logits + other, keys) == pytest.approx(addition_loss(logits), rel=1e-9)
    # unstructured noise: what is left after removing the key frequencies is close to uniform
    noise = 0.05 * torch.randn(p, p, p, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert excluded_loss(logits + noise, keys, train) == pytest.approx(math.log(p), rel=0.01)


def test_key_frequency_component_matches_products_of_1d_basis_terms():
    """Reference: cos(w(a+b)) = cos a cos b - sin a sin b and sin(w(a+b)) = sin a cos b + cos a sin b, built from the
    1D basis rows as outer products (the 2D Fourier basis of Z_p x Z_p)."""
    p, keys = 13, [1, 4]
    logits = torch.randn(p, p, p, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    basis = fourier_basis(p, dtype=torch.float64)
    expected = torch.zeros_like(logits)
    for k in keys:
        cos, sin = basis[2 * k - 1], basis[2 * k]
        for direction in ((torch.outer(cos, cos) - torch.outer(sin, sin)) / math.sqrt(2),
                          (torch.outer(sin, cos) + torch.outer(cos, sin)) / math.sqrt(2)):
            expected += direction[:, :, None] * (direction[:, :, None] * logits).sum(dim=(0, 1))
    component = key_frequency_component(logits, keys)
    assert torch.allclose(component, expected, atol=1e-10)
    assert torch.allclose(key_frequency_component(component, keys), component, atol=1e-10)  # a projection


def test_input_embedding_of_mlp_is_its_first_layer_on_one_hot_inputs():
    torch.manual_seed(0)
    net = MLP(in_features=14, num_classes=7, hidden_dim=16)
    first = net.hidden[0]
    with torch.no_grad():
        rows = first(torch.eye(14)) - first.bias
    assert net.input_embedding().shape == (14, 16)
    assert torch.allclose(net.input_embedding(), rows, atol=1e-6)


def test_input_embedding_of_transformer_is_its_token_embedding():
    torch.manual_seed(0)
    net = Transformer(vocab_size=11, num_classes=7, seq_len=4, n_layers=1, d_model=8)
    tokens = torch.arange(11)
    assert torch.equal(net.input_embedding(), net.token_embedding(tokens))


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="progress_measures"):
        FourierSpectrum(progress_measures="sometimes")
    with pytest.raises(ConfigError, match="top_k"):
        FourierSpectrum(top_k=0)
    mlp = SimpleNamespace(net=MLP(in_features=22, num_classes=11, hidden_dim=8))
    one_hot = SimpleNamespace(datamodule=ModularArithmetic(p=11, format="onehot"), is_global_zero=True)
    with pytest.raises(ConfigError, match="progress_measures='on'"):
        FourierSpectrum(progress_measures="on").setup(one_hot, mlp, "fit")
    FourierSpectrum(progress_measures="auto").setup(one_hot, mlp, "fit")  # auto skips silently


# ---- real short runs ---------------------------------------------------------------------------------------

FOURIER = ["+callbacks.fourier._target_=callbacks.diagnostics.fourier.FourierSpectrum", "+callbacks.fourier.every_n_steps=20",
           "+callbacks.fourier.top_k=3"]


def final_net(run_dir, overrides):
    """The net rebuilt from the run's last checkpoint (eval mode), and its data."""
    from tests.conftest import SMALL, rebuilt
    module, data = rebuilt([*SMALL, *overrides], run_dir / "checkpoints" / "last.ckpt")
    return module.net, data


def check_plots_and_last_row(run_dir, energies):
    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert {"fourier_spectrum.png", "fourier_spectrum_evolution.png"} <= plots
    logged = pd.read_csv(run_dir / "metrics.csv")
    rows = logged.dropna(subset=["fourier/gini"])
    assert list(rows["step"]) == [0, 19, 39]  # at init, after step 20 and after the 40th (last) step
    last = rows.iloc[-1]
    norms = energies.sqrt()
    assert last["fourier/gini"] == pytest.approx(gini(energies[1:]), rel=1e-4)
    assert last["fourier/top3_fraction"] == pytest.approx(top_k_fraction(norms, 3), rel=1e-4)
    assert [int(last[f"fourier/key_freq_{i}"]) for i in range(3)] == key_frequencies(norms, 3)
    return last


def test_mlp_run_logs_the_spectrum_of_both_operands(run_config):
    overrides = [*FOURIER, "data.p=23", "model.hidden_dim=32"]
    summary, run_dir = run_config(overrides)
    assert summary["status"] == "completed"
    net, data = final_net(run_dir, overrides)
    weight = net.hidden[0].weight.detach().double()  # (32, 46): columns 0..22 operand a, 23..45 operand b
    energies = frequency_energies(weight[:, :23].T) + frequency_energies(weight[:, 23:46].T)
    last = check_plots_and_last_row(run_dir, energies)
    assert "fourier/restricted_loss" not in last.index  # auto: only for 1-layer transformers


@pytest.mark.parametrize("op_token", [True, False], ids=["a_op_b_eq", "a_b_eq"])
def test_one_layer_transformer_run_logs_progress_measures(run_config, op_token):
    overrides = [*FOURIER, "experiment=transformer_grok", "size=cpu", "data.p=23", "model.d_model=32", "model.n_heads=2",
                 "callbacks.grokking_time.stop_after_steps=null", f"data.op_token={str(op_token).lower()}"]
    summary, run_dir = run_config(overrides)
    assert summary["status"] == "completed"
    net, data = final_net(run_dir, overrides)
    p = data.p
    energies = frequency_energies(net.token_embedding.weight.detach().double()[:p])
    last = check_plots_and_last_row(run_dir, energies)

    # recompute both losses from the final weights: grid from explicit (a, b) tokens, train pairs from the indices
    a, b = (t.flatten() for t in torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"))
    eq = torch.full_like(a, data.token_ids()["EQ"])
    op = [torch.full_like(a, data.token_ids()["op:add"])] if op_token else []
    tokens = torch.stack([a, *op, b, eq], dim=1)
    with torch.no_grad():
        logits = net(tokens).logits[:, -1].reshape(p, p, p)
    train = torch.zeros(p * p, dtype=torch.bool)
    train[data.indices["train"]] = True  # equation i of modular addition is (a, b) = divmod(i, p)
    keys = [int(last[f"fourier/key_freq_{i}"]) for i in range(3)]
    assert last["fourier/restricted_loss"] == pytest.approx(restricted_loss(logits, keys), rel=1e-4)
    assert last["fourier/excluded_loss"] == pytest.approx(excluded_loss(logits, keys, train.reshape(p, p)), rel=1e-4)
    # 40 steps in, the net memorises: removing 3 of 11 frequencies leaves the training loss well below uniform
    assert last["fourier/excluded_loss"] < math.log(p)

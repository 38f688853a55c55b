"""The spectral penalty: closed-form values on planted functions, and it is wired into a real run."""
import math

import pytest
import torch

from regularizers.spectral import frequency_weights, spectral_term


def planted(p, k):
    """(p*p, p) logits L[a, b, c] = cos(2π k (a + b - c) / p), a-major."""
    a, b, c = torch.meshgrid(torch.arange(p), torch.arange(p), torch.arange(p), indexing="ij")
    return torch.cos(2 * math.pi * k * (a + b - c) / p).reshape(p * p, p)


@pytest.mark.parametrize("p,k", [(11, 1), (11, 5), (13, 3), (13, 10)])
def test_single_frequency_gives_its_squared_share(p, k):
    m = (p - 1) // 2
    expected = (min(k, p - k) / m) ** 2
    assert spectral_term(planted(p, k), p).item() == pytest.approx(expected, rel=1e-5)


def test_function_of_neither_operand_costs_nothing_and_class_shift_is_ignored():
    p = 7
    logits = torch.randn(1, p).expand(p * p, p) + torch.randn(p * p, 1)  # same class scores; per-input shift
    assert spectral_term(logits, p).item() == pytest.approx(0.0, abs=1e-6)


def test_weights_range_and_symmetry():
    w = frequency_weights(11)
    assert w[0, 0] == 0 and w.max() == 1 and torch.equal(w, w.T) and torch.equal(w[1], w[-1])


def test_mixture_weighs_energies():
    p = 11
    low, high = planted(p, 1), 2 * planted(p, 5)  # energies 1 : 4 at squared frequency shares 1/25 and 1
    expected = (1 * (1 / 25) + 4 * 1.0) / 5
    assert spectral_term(low + high, p).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.rounding
def test_spectral_penalty_lowers_the_term_against_no_penalty_from_the_same_init(run_config):
    import pandas as pd

    # the term after 60 steps with weight 3 over without, seeds 0-9, AVX-512 and default kernels alike: 0.10-0.15
    # (with weight 1: 0.37-0.60, below 0.5 for 3 seeds of 10 only)
    base = ["data.p=11", "trainer.max_steps=60", "optimizer.weight_decay=0", "regularizer=spectral"]
    last = {}
    for weight in (0.0, 3.0):  # weight 0 still computes and logs the term
        summary, out = run_config([*base, f"regularizer.spectral.weight={weight}"], name=f"w{weight}")
        assert summary["status"] == "completed"
        last[weight] = pd.read_csv(out / "metrics.csv")["train/reg/spectral"].dropna().iloc[-1]
    assert last[3.0] < 0.5 * last[0.0]


def test_spectral_refuses_division(run_config):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="data.operations"):
        run_config(["data.operations=[div]", "regularizer=spectral"])


def test_spectral_refuses_a_task_without_modular_structure_in_one_line_naming_the_keys():
    from types import SimpleNamespace

    from core.errors import ConfigError
    from regularizers.spectral import SpectralPenalty
    from tests.helpers import RandomTokens

    module = SimpleNamespace(trainer=SimpleNamespace(datamodule=RandomTokens()))
    with pytest.raises(ConfigError) as refused:
        SpectralPenalty(0.1).bind(module)
    assert str(refused.value) == ("data='RandomTokens' is not allowed: expected modular arithmetic with "
                                  "regularizer.spectral (the penalty reads the net on the Z_p x Z_p grid, which "
                                  "this task lacks)")


@pytest.mark.parametrize("format", ["onehot", "tokens", "sequence"])
def test_the_term_reads_the_answer_position_of_every_format(format):
    from types import SimpleNamespace

    from datamodules import ModularArithmetic
    from lightning_modules.answers import aligned_logits
    from nets import MLP, Transformer
    from regularizers.spectral import SpectralPenalty

    p = 7
    data = ModularArithmetic(p=p, format=format)
    spec = data.spec
    torch.manual_seed(0)
    net = (MLP(spec.in_features, spec.num_classes, hidden_dim=8) if format == "onehot" else
           Transformer(spec.vocab_size, spec.num_classes, spec.seq_len, n_layers=1, d_model=8))
    penalty = SpectralPenalty(1.0)
    penalty.bind(SimpleNamespace(trainer=SimpleNamespace(datamodule=data), net=net, device=torch.device("cpu")))
    grid = data.grid()
    column = 4 if format == "sequence" else 0  # sequence targets [a, OP, b, EQ, c, EOS, EOS]: c at 4
    expected = aligned_logits(net(grid.inputs), grid.targets.shape[1])[:, column]
    assert penalty.term(None).item() == pytest.approx(spectral_term(expected, p).item(), rel=1e-6)


def test_under_bf16_autocast_the_spectrum_is_taken_in_float32(monkeypatch):
    # CUDA's FFT refuses bf16 input (fp16 too, but for powers of two); CPU autocast hides that. A stand-in for fft2
    # with CUDA's rule, around the real one; the net's logits come out of bf16 autocast as bf16
    from types import SimpleNamespace

    from datamodules import ModularArithmetic
    from nets import MLP
    from regularizers.spectral import SpectralPenalty

    real_fft2 = torch.fft.fft2

    def cuda_fft2(x, *args, **kwargs):
        if x.dtype in (torch.bfloat16, torch.float16):
            raise RuntimeError(f"cuFFT does not support {x.dtype}")
        return real_fft2(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "fft2", cuda_fft2)
    p = 11
    data = ModularArithmetic(p=p, format="onehot")
    torch.manual_seed(0)
    net = MLP(data.spec.in_features, data.spec.num_classes, hidden_dim=16)
    penalty = SpectralPenalty(1.0)
    penalty.bind(SimpleNamespace(trainer=SimpleNamespace(datamodule=data), net=net, device=torch.device("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(data.grid().inputs).logits
        term = penalty.term(None)
    assert logits.dtype == torch.bfloat16 and term.dtype == torch.float32
    # the same bf16 logits, their spectrum in float64: only float32's rounding of the FFT between the two
    assert term.item() == pytest.approx(spectral_term(logits.double(), p).item(), rel=1e-5)

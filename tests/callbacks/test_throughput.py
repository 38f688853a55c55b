"""MFU's denominator: the table of device peaks (core/device_peaks.py) and how the throughput callback
(callbacks/run/throughput.py) picks a run's peak. What it reports over a real run is tested in tests/test_hybrid_lm.py."""
from __future__ import annotations

import pytest
import torch

from callbacks.run.throughput import Throughput, device_peak
from core.device_peaks import compute_precision, peak_flops
from core.errors import ConfigError


@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4),   # the SXM card
    ("NVIDIA H100 PCIe", "bf16", 756.5),        # its own row, before the plain H100's
    ("NVIDIA H100 NVL", "fp32", 60.0),
    ("NVIDIA H200", "tf32", 494.7),
    ("NVIDIA H200 NVL", "bf16", 835.5),
    ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),     # words split at dashes
    ("NVIDIA A100 80GB PCIe", "bf16", 312.0),
    ("NVIDIA L40S", "bf16", 362.1),
    ("NVIDIA L4", "fp32", 30.3),
])
def test_the_table_finds_a_device_by_the_words_of_its_name(name, precision, tflops):
    assert peak_flops(name, precision) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name, precision", [("NVIDIA L40", "bf16"),  # not an L4, not an L40S: unknown
                                             ("Tesla V100-SXM2-16GB", "fp32"), ("NVIDIA GH200 480GB", "bf16"),
                                             ("NVIDIA H100 80GB HBM3", None), ("NVIDIA H100 80GB HBM3", "fp64")])
def test_an_unknown_device_or_precision_has_no_peak(name, precision):
    assert peak_flops(name, precision) is None


def test_the_precision_a_run_computes_in():
    assert compute_precision("bf16-mixed") == compute_precision("16-mixed") == compute_precision("bf16-true") == "bf16"
    assert compute_precision("32-true", "highest", "cuda") == "fp32"
    assert compute_precision("32-true", "high", "cuda") == compute_precision("32", "medium", "cuda") == "tf32"
    assert compute_precision("32-true", "high", "cpu") == "fp32"  # no tensor cores to take TF32
    assert compute_precision("64-true") is None


def test_a_run_takes_the_given_peak_else_the_tables_and_a_cpu_has_none(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert device_peak(cpu, "32-true", None) is None
    assert device_peak(cpu, "32-true", 2.5) == (2.5e12, "given (peak_tflops)")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert device_peak(gpu, "bf16-mixed", None) == (pytest.approx(989.4e12), "NVIDIA H200, bf16 (table)")
    assert device_peak(gpu, "32-true", None) == (pytest.approx(494.7e12), "NVIDIA H200, tf32 (table)")
    assert device_peak(gpu, "bf16-mixed", 100) == (100e12, "given (peak_tflops)")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA RTX 9999")
    assert device_peak(gpu, "bf16-mixed", None) is None


@pytest.mark.parametrize("peak", [0, -1.0, "fast", True])
def test_a_bad_peak_is_refused_by_key(peak):
    with pytest.raises(ConfigError) as info:
        Throughput(peak_tflops=peak)
    assert info.value.key == "peak_tflops" and "\n" not in str(info.value)

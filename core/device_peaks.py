"""The peak FLOP/s of accelerators, by name and precision: the denominator of model FLOPs utilisation (MFU), how far a
run is from what its device could do (callbacks/run/throughput.py, the benches).

The table holds dense peaks (no structured sparsity) from the vendors' datasheets, in TFLOP/s, for the precision
the matrix products run in: `bf16` (also fp16), `tf32` (float32 inputs on tensor cores: torch's float32 matmul
precision `high` or `medium` on CUDA), `fp32`. A device is found by the words of its name as torch reports it
("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"): the first row whose words all occur in it. A device the table
does not know (and every CPU) has no peak: give one (`peak_tflops` of the throughput callback, `--peak-tflops` of a
bench) to get an MFU there.
"""
from __future__ import annotations

import re

PRECISIONS = ("bf16", "tf32", "fp32")

# name words -> dense TFLOP/s per precision; more specific rows first (an "H100 PCIe" is also an "H100")
PEAK_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("H100", "PCIE"), {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (("H100", "NVL"), {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H100",), {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM ("NVIDIA H100 80GB HBM3")
    (("H200", "NVL"), {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H200",), {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM: the H100 SXM's compute, more memory
    (("A100",), {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (("L40S",), {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    (("L4",), {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
)


def name_words(device_name: str) -> set[str]:
    """The words of a device's name, upper case: "NVIDIA A100-SXM4-40GB" -> {NVIDIA, A100, SXM4, 40GB}."""
    return set(re.findall(r"[A-Z0-9]+", device_name.upper()))


def compute_precision(trainer_precision: str, float32_matmul_precision: str = "highest",
                      device_type: str = "cuda") -> str | None:
    """The precision a run's matrix products run in, a column of the table: bf16 for 16- and bf16- precisions,
    tf32 for 32-bit on CUDA with a float32 matmul precision below `highest`, fp32 for 32-bit; None for 64-bit."""
    precision = str(trainer_precision)
    if precision.startswith(("bf16", "16")):
        return "bf16"
    if precision.startswith("32"):
        return "tf32" if device_type == "cuda" and float32_matmul_precision != "highest" else "fp32"
    return None


def peak_flops(device_name: str, precision: str | None) -> float | None:
    """The device's dense peak in FLOP/s at `precision` (bf16 | tf32 | fp32), or None where the table has none."""
    words = name_words(device_name)
    for needed, peaks in PEAK_TFLOPS:
        if set(needed) <= words:
            return peaks[precision] * 1e12 if precision in peaks else None
    return None


__all__ = ["PEAK_TFLOPS", "PRECISIONS", "compute_precision", "name_words", "peak_flops"]

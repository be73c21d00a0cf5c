"""Peak dense throughput of common NVIDIA GPUs, for the model FLOP utilisation (MFU) `sdft bench`
reports. Torch-free.

Figures are TFLOP/s per GPU from NVIDIA's datasheets, without structured sparsity (the datasheets'
starred figures are halved): fp16/bf16 tensor cores with fp32 accumulation, TF32 tensor cores, and
plain fp32. A GPU not listed gets no MFU ("unknown GPU"): a guessed peak would make a guessed MFU.
"""

from __future__ import annotations

import re

# (pattern searched in torch's device name, peaks). The first match wins, so a variant (PCIe,
# NVL) comes before its family's SXM figure; word boundaries keep "A10" from matching "A100"/"A10G".
GPU_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),
    (r"H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"H100", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),
    (r"A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (r"RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"\bT4\b", {"fp16": 65.0, "fp32": 8.1}),
)


def compute_dtype(mixed_precision: str, full_bf16: bool = False, allow_tf32: bool = True) -> str:
    """Which peak a run's matrix maths runs against."""
    if full_bf16:
        return "bf16"
    if mixed_precision in ("fp16", "bf16"):
        return mixed_precision
    return "tf32" if allow_tf32 else "fp32"


def peak_tflops(device_name: str, dtype: str) -> tuple[float | None, str]:
    """(peak TFLOP/s, what it is) for a device name as torch reports it; (None, why) when unknown."""
    for pattern, peaks in GPU_PEAKS:
        if re.search(pattern, device_name):
            label = pattern.replace("\\b", "")
            if dtype not in peaks:
                return None, f"no {dtype} peak for {label}"
            return peaks[dtype], f"{label} {dtype} peak {peaks[dtype]:g} TFLOP/s"
    return None, f"unknown GPU ({device_name})"

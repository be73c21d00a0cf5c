"""Which floating-point types a device can train in, with a fix when it cannot.

accelerate silently ignores fp16 mixed precision on a CPU, and bf16 needs an
Ampere-or-newer GPU; we say so up front and name the setting to use instead.
"""

from __future__ import annotations

from engine.models.errors import ModelLoadError

MIXED_PRECISIONS = ("no", "fp16", "bf16")


def check_training_dtype(mixed_precision: str, device: str) -> None:
    """Raise ModelLoadError when ``device`` ("cpu", "cuda", "cuda:1", "mps") cannot train in it."""
    if mixed_precision not in MIXED_PRECISIONS:
        raise ModelLoadError(f"memory.mixed_precision = {mixed_precision!r} is not a choice; "
                             f"use one of {', '.join(MIXED_PRECISIONS)}")
    kind = device.split(":")[0]
    if mixed_precision == "fp16" and kind == "cpu":
        raise ModelLoadError(
            'memory.mixed_precision = "fp16" cannot train on a CPU (accelerate would silently train in '
            'fp32); use "bf16" (if your CPU supports it) or "no" (fp32)')
    if mixed_precision == "bf16" and kind == "cuda":
        import torch

        index = int(device.split(":")[1]) if ":" in device else 0
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(index)
            raise ModelLoadError(
                f'memory.mixed_precision = "bf16" is not supported by {name} (needs an Ampere or newer '
                'GPU); use "fp16" (with loss scaling) or "no" (fp32)')
    if mixed_precision == "fp16" and kind == "mps":
        raise ModelLoadError('memory.mixed_precision = "fp16" is not supported for training on Apple MPS; '
                             'use "no" (fp32)')

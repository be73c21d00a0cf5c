"""VRAM planner, the presets: a starting point per GPU memory size, as it can run here."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from engine.plan.estimate import GB, GIB, PlanOptions
from engine.plan.suggestions import runnable_values


# Starting points per GPU memory size (GB as printed on the card), SD1.x at 512². Each preset is a
# set of run-TOML dotted keys; tests check each fits its size with the safety margin.
PRESETS: dict[int, dict[str, Any]] = {
    8: {"memory.mixed_precision": "bf16", "memory.full_bf16": True, "memory.gradient_checkpointing": True,
        "memory.attention": "sdpa", "optimizer.type": "AdamW8bit", "general.batch_size": 1,
        "train.train_text_encoder": False, "train.ema": False, "cache.latents": "disk"},
    12: {"memory.mixed_precision": "fp16", "memory.full_bf16": False, "memory.gradient_checkpointing": True,
         "memory.attention": "sdpa", "optimizer.type": "AdamW8bit", "general.batch_size": 2,
         "train.train_text_encoder": False, "train.ema": False, "cache.latents": "disk"},
    16: {"memory.mixed_precision": "fp16", "memory.full_bf16": False, "memory.gradient_checkpointing": True,
         "memory.attention": "sdpa", "optimizer.type": "AdamW8bit", "general.batch_size": 4,
         "train.train_text_encoder": True, "train.ema": False, "cache.latents": "disk"},
    24: {"memory.mixed_precision": "bf16", "memory.full_bf16": False, "memory.gradient_checkpointing": False,
         "memory.attention": "sdpa", "optimizer.type": "AdamW8bit", "general.batch_size": 4,
         "train.train_text_encoder": True, "train.ema": False, "cache.latents": "disk"},
    48: {"memory.mixed_precision": "bf16", "memory.full_bf16": False, "memory.gradient_checkpointing": False,
         "memory.attention": "sdpa", "optimizer.type": "AdamW", "general.batch_size": 8,
         "train.train_text_encoder": True, "train.ema": True, "train.ema_cpu_offload": False,
         "cache.latents": "disk"},
}

_PRESET_FIELDS = {
    "memory.mixed_precision": "mixed_precision", "memory.gradient_checkpointing": "gradient_checkpointing",
    "memory.attention": "attention", "optimizer.type": "optimizer", "general.batch_size": "batch_size",
    "train.train_text_encoder": "train_text_encoder", "train.ema": "ema", "train.ema_cpu_offload": "ema_cpu_offload",
    "cache.latents": "cache_latents",
}


def preset_values(size_gb: int, caps=None) -> tuple[dict[str, Any], list[str]]:
    """The preset for a card of ``size_gb`` as it can run here (``caps``: engine.hardware.Capabilities;
    None keeps it as written), with a note for each choice replaced (see runnable_values)."""
    return runnable_values(PRESETS[size_gb], caps)


def apply_preset_to_options(o: PlanOptions, preset: dict[str, Any]) -> PlanOptions:
    """PlanOptions with a preset's values (run-TOML keys mapped to planner fields)."""
    changes = {_PRESET_FIELDS[k]: v for k, v in preset.items() if k in _PRESET_FIELDS}
    if "memory.full_bf16" in preset or "memory.full_fp16" in preset:
        changes["full_half"] = bool(preset.get("memory.full_bf16") or preset.get("memory.full_fp16"))
    return replace(o, **changes)


def preset_for(vram_bytes: float | None) -> int:
    """The largest preset size (GB) not above the GPU's memory; 8 for unknown/smaller GPUs."""
    if not vram_bytes:
        return 8
    # Cards are sold in GB but report GiB minus reserved memory (a "24 GB" card shows ~23.6 GiB).
    card_gb = vram_bytes / GIB + 0.75
    best = 8
    for size in sorted(PRESETS):
        if card_gb >= size:
            best = size
    return best


def budget_for_preset(size_gb: int) -> float:
    """Usable bytes on a card sold as ``size_gb``: its GiB minus ~0.4 GiB the driver reserves."""
    return size_gb * GIB - 0.4 * GIB


def ceil_gb(value: float) -> int:
    return int(math.ceil(value / GB))

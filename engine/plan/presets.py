"""VRAM planner, the presets: a starting point per GPU memory size, as it can run here."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from engine.plan.estimate import GB, GIB, PlanOptions
from engine.plan.suggestions import runnable_values

# Starting points per GPU memory size (GB as printed on the card), SD1.x at 512². Each preset is a
# set of run-TOML dotted keys; tests check each fits its size with the safety margin and learns
# (bf16 weights only with stochastic rounding, engine/plan/learning.py).
_COMMON = {"memory.attention": "sdpa", "cache.latents": "disk", "memory.full_bf16": False,
           "memory.fused_backward_pass": False, "train.ema": False}
PRESETS: dict[int, dict[str, Any]] = {
    # bf16 weights written back with stochastic rounding, each weight stepped inside backward
    # (kohya's and OneTrainer's low-memory recipe): about 5 GB, room for sample previews.
    8: {**_COMMON, "memory.mixed_precision": "bf16", "memory.full_bf16": True, "memory.fused_backward_pass": True,
        "memory.gradient_checkpointing": True, "optimizer.type": "AdamW8bit",
        "general.batch_size": 1, "train.train_text_encoder": False},
    12: {**_COMMON, "memory.mixed_precision": "fp16", "memory.gradient_checkpointing": True,
         "optimizer.type": "AdamW8bit", "general.batch_size": 2, "train.train_text_encoder": False},
    16: {**_COMMON, "memory.mixed_precision": "fp16", "memory.gradient_checkpointing": True,
         "optimizer.type": "AdamW8bit", "general.batch_size": 4, "train.train_text_encoder": True},
    24: {**_COMMON, "memory.mixed_precision": "bf16", "memory.gradient_checkpointing": False,
         "optimizer.type": "AdamW8bit", "general.batch_size": 4, "train.train_text_encoder": True},
    48: {**_COMMON, "memory.mixed_precision": "bf16", "memory.gradient_checkpointing": False,
         "optimizer.type": "AdamW", "general.batch_size": 8, "train.train_text_encoder": True,
         "train.ema": True, "train.ema_cpu_offload": False},
}

# On a GPU without bf16 (before Ampere) the presets that need bf16 change more than one key: fp16's
# gradient scaler cannot follow a fused backward pass, so the 8 GB card keeps fp32 weights and
# maths with the fused pass (about 7 GB, slower), the others take fp16.
WITHOUT_BF16: dict[int, dict[str, Any]] = {
    8: {"memory.mixed_precision": "no", "memory.full_bf16": False},
    24: {"memory.mixed_precision": "fp16"},
    48: {"memory.mixed_precision": "fp16"},
}

_PRESET_FIELDS = {
    "memory.mixed_precision": "mixed_precision", "memory.gradient_checkpointing": "gradient_checkpointing",
    "memory.fused_backward_pass": "fused_backward_pass",
    "memory.attention": "attention", "optimizer.type": "optimizer", "general.batch_size": "batch_size",
    "train.train_text_encoder": "train_text_encoder", "train.ema": "ema", "train.ema_cpu_offload": "ema_cpu_offload",
    "cache.latents": "cache_latents",
}


def preset_values(size_gb: int, caps=None) -> tuple[dict[str, Any], list[str]]:
    """The preset for a card of ``size_gb`` as it can run here (``caps``: engine.hardware.Capabilities;
    None keeps it as written), with a note for each choice replaced (see runnable_values)."""
    values, notes = dict(PRESETS[size_gb]), []
    if caps is not None and not caps.bf16 and size_gb in WITHOUT_BF16:
        from engine.hardware import BF16_WORDS

        values.update(WITHOUT_BF16[size_gb])
        changed = ", ".join(f"{k} = {_toml(v)}" for k, v in WITHOUT_BF16[size_gb].items() if PRESETS[size_gb].get(k) != v)
        notes.append(f"no bf16 on this GPU (it needs {BF16_WORDS}): {changed}")
    runnable, more = runnable_values(values, caps)
    return runnable, notes + more


def _toml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else str(value)


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

"""VRAM planner, the presets: a starting point per GPU memory size and model family, as it can
run here."""

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

# SDXL (2.57 B U-Net parameters, 1024² images) at 24, 48 and 80 GB, with kohya's SDXL dataset
# defaults (sd-scripts' SDXL docs: 1024² buckets from 512 to 2048 in steps of 64). 24 GB is kohya's
# low-memory recipe: bf16 weights with stochastic rounding, each weight stepped inside backward by
# Adafactor (0.38 bytes of state per parameter for SDXL's mostly linear layers). None caches the
# text encoders' outputs (cache.text_encoder_outputs): it fits without, and the cache cannot
# follow shuffled or dropped tags; the planner suggests it where it is what makes a run fit.
_SDXL_DATA = {"general.resolution": 1024, "general.enable_bucket": True, "general.min_bucket_reso": 512,
              "general.max_bucket_reso": 2048, "general.bucket_reso_steps": 64}
SDXL_PRESETS: dict[int, dict[str, Any]] = {
    24: {**_COMMON, **_SDXL_DATA, "memory.mixed_precision": "bf16", "memory.full_bf16": True,
         "memory.fused_backward_pass": True, "memory.gradient_checkpointing": True, "optimizer.type": "Adafactor",
         "general.batch_size": 1, "train.train_text_encoder": False},
    48: {**_COMMON, **_SDXL_DATA, "memory.mixed_precision": "bf16", "memory.gradient_checkpointing": True,
         "optimizer.type": "AdamW8bit", "general.batch_size": 4, "train.train_text_encoder": False,
         "train.ema": True, "train.ema_cpu_offload": False},
    80: {**_COMMON, **_SDXL_DATA, "memory.mixed_precision": "bf16", "memory.gradient_checkpointing": True,
         "optimizer.type": "AdamW", "general.batch_size": 8, "train.train_text_encoder": True},
}
# Each family's presets; a family not named here takes SD's.
FAMILY_PRESETS: dict[str, dict[int, dict[str, Any]]] = {"sdxl": SDXL_PRESETS}

# On a GPU without bf16 (before Ampere) the presets that need bf16 change more than one key: fp16's
# gradient scaler cannot follow a fused backward pass, so the 8 GB card keeps fp32 weights and
# maths with the fused pass (about 7 GB, slower), the others take fp16.
WITHOUT_BF16: dict[int, dict[str, Any]] = {
    8: {"memory.mixed_precision": "no", "memory.full_bf16": False},
    24: {"memory.mixed_precision": "fp16"},
    48: {"memory.mixed_precision": "fp16"},
}
# SDXL's 24 GB card likewise keeps fp32 weights with the fused pass (about 17 GB).
FAMILY_WITHOUT_BF16: dict[str, dict[int, dict[str, Any]]] = {"sdxl": {
    24: {"memory.mixed_precision": "no", "memory.full_bf16": False},
    48: {"memory.mixed_precision": "fp16"},
    80: {"memory.mixed_precision": "fp16"},
}}

_PRESET_FIELDS = {
    "memory.mixed_precision": "mixed_precision", "memory.gradient_checkpointing": "gradient_checkpointing",
    "memory.fused_backward_pass": "fused_backward_pass",
    "memory.attention": "attention", "optimizer.type": "optimizer", "general.batch_size": "batch_size",
    "train.train_text_encoder": "train_text_encoder", "train.ema": "ema", "train.ema_cpu_offload": "ema_cpu_offload",
    "cache.latents": "cache_latents", "cache.text_encoder_outputs": "cache_text_encoder_outputs",
}


def presets_for(family: str = "sd1") -> dict[int, dict[str, Any]]:
    """The presets of a model family, by card size (GB)."""
    return FAMILY_PRESETS.get(family, PRESETS)


def without_bf16(family: str = "sd1") -> dict[int, dict[str, Any]]:
    return FAMILY_WITHOUT_BF16.get(family, WITHOUT_BF16)


def preset_values(size_gb: int, caps=None, family: str = "sd1") -> tuple[dict[str, Any], list[str]]:
    """The preset of ``family`` for a card of ``size_gb`` as it can run here (``caps``:
    engine.hardware.Capabilities; None keeps it as written), with a note for each choice replaced
    (see runnable_values). A size the family has no preset for is a ValueError naming those it has."""
    presets, instead = presets_for(family), without_bf16(family)
    if size_gb not in presets:
        raise ValueError(f"no {size_gb} GB preset for {_label(family)}: choose one of "
                         + ", ".join(f"{size} GB" for size in sorted(presets)))
    values, notes = dict(presets[size_gb]), []
    if caps is not None and not caps.bf16 and size_gb in instead:
        from engine.hardware import BF16_WORDS

        values.update(instead[size_gb])
        changed = ", ".join(f"{k} = {_toml(v)}" for k, v in instead[size_gb].items() if presets[size_gb].get(k) != v)
        notes.append(f"no bf16 on this GPU (it needs {BF16_WORDS}): {changed}")
    runnable, more = runnable_values(values, caps)
    return runnable, notes + more


def _label(family: str) -> str:
    from engine.families import family as adapter

    return adapter(family).label


def _toml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else str(value)


def apply_preset_to_options(o: PlanOptions, preset: dict[str, Any]) -> PlanOptions:
    """PlanOptions with a preset's values (run-TOML keys mapped to planner fields)."""
    changes = {_PRESET_FIELDS[k]: v for k, v in preset.items() if k in _PRESET_FIELDS}
    if "general.resolution" in preset:
        side = preset["general.resolution"]
        changes["width"], changes["height"] = (side, side) if isinstance(side, int) else tuple(side)
    if "memory.full_bf16" in preset or "memory.full_fp16" in preset:
        changes["full_half"] = bool(preset.get("memory.full_bf16") or preset.get("memory.full_fp16"))
    return replace(o, **changes)


def preset_for(vram_bytes: float | None, family: str = "sd1") -> int:
    """The largest preset size (GB) of ``family`` not above the GPU's memory; its smallest for
    unknown or smaller GPUs."""
    presets = presets_for(family)
    best = min(presets)
    if not vram_bytes:
        return best
    # Cards are sold in GB but report GiB less what the driver reserves: a "24 GB" card shows
    # ~23.6 GiB, an 80 GB H100 or A100 ~79.2 GiB.
    card_gb = vram_bytes / GIB * 1.02 + 0.5
    for size in sorted(presets):
        if card_gb >= size:
            best = size
    return best


def budget_for_preset(size_gb: int) -> float:
    """Usable bytes on a card sold as ``size_gb``: its GiB minus ~0.4 GiB the driver reserves."""
    return size_gb * GIB - 0.4 * GIB


def ceil_gb(value: float) -> int:
    return int(math.ceil(value / GB))

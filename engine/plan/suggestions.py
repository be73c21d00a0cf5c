"""VRAM planner, the suggestions: single changes that lower the estimate, least intrusive first,
and one combined change when none fits alone; none picks a choice this machine cannot run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from engine.plan.estimate import MARGIN, PlanOptions, coefficients, estimate_peak_vram, fmt_gb
from engine.registry import optimizers


@dataclass(frozen=True)
class Suggestion:
    """A change that lowers the estimate: ``changes`` maps PlanOptions fields to new values and
    ``config_changes`` maps run-TOML dotted keys to the values to write."""

    text: str
    new_total: float
    changes: dict = field(default_factory=dict)
    config_changes: dict = field(default_factory=dict)
    fits: bool = False


def _state_bytes(name: str) -> float:
    entry = optimizers.find(name)
    if entry is None:
        return optimizers.UNKNOWN_STATE_BYTES
    return entry.state_bytes if entry.state_bytes is not None else 2.0   # Adafactor: about 2


def _can_fuse(o: PlanOptions) -> bool:
    """A fused backward pass applies (engine/config/run_toml.py refuses the rest, with reasons)."""
    entry = optimizers.find(o.optimizer)
    return (o.mode == "full" and not o.fused_backward_pass and o.gradient_accumulation_steps == 1
            and o.mixed_precision != "fp16" and entry is not None and entry.per_parameter)


# Single changes, least intrusive first: (text, PlanOptions changes, run-TOML changes, applies-if).
_CHANGES = [
    ("use SDPA attention instead of math", {"attention": "sdpa"}, {"memory.attention": "sdpa"},
     lambda o: o.attention == "math"),
    ("keep the EMA in CPU memory", {"ema_cpu_offload": True}, {"train.ema_cpu_offload": True},
     lambda o: o.ema and not o.ema_cpu_offload),
    ("cache latents", {"cache_latents": "disk"}, {"cache.latents": "disk"},
     lambda o: o.cache_latents == "none"),
    # SDXL's two frozen text encoders (1.6 GB in bf16) leave the GPU once their outputs are cached
    ("cache the text encoders' outputs", {"cache_text_encoder_outputs": "disk"}, {"cache.text_encoder_outputs": "disk"},
     lambda o: (o.cache_text_encoder_outputs == "none" and not (o.train_text_encoder and o.mode == "full")
                and len(coefficients(o.family).text_params) > 1)),
    ("enable gradient checkpointing", {"gradient_checkpointing": True}, {"memory.gradient_checkpointing": True},
     lambda o: not o.gradient_checkpointing),
    ("use the AdamW8bit optimizer", {"optimizer": "AdamW8bit"}, {"optimizer.type": "AdamW8bit"},
     lambda o: _state_bytes(o.optimizer) >= 4),
    ("use fp16 mixed precision", {"mixed_precision": "fp16"}, {"memory.mixed_precision": "fp16"},
     lambda o: o.mixed_precision == "no"),
    ("stop training the text encoder", {"train_text_encoder": False}, {"train.train_text_encoder": False},
     lambda o: o.train_text_encoder and o.mode == "full"),
    ("step each weight inside backward (fused_backward_pass)", {"fused_backward_pass": True},
     {"memory.fused_backward_pass": True}, _can_fuse),
    # bf16 weights only with stochastic rounding: rounded to nearest they do not learn (learning.py)
    ("keep weights in bf16 with stochastic rounding (full_bf16)",
     {"mixed_precision": "bf16", "full_half": True, "stochastic_rounding": True},
     {"memory.mixed_precision": "bf16", "memory.full_bf16": True, "memory.full_fp16": False,
      "memory.stochastic_rounding": True},
     lambda o: not o.full_half and o.mode == "full" and not (o.fused_backward_pass and o.mixed_precision == "fp16")),
]


# What a preset or a suggestion picks instead of a choice that cannot run here (engine.hardware
# says which): the nearest choice in memory that runs on any machine.
INSTEAD: dict[tuple[str, Any], tuple[str, Any, str]] = {
    # (run-TOML key, value) -> (PlanOptions field, value instead, words for a suggestion)
    **{("optimizer.type", e.name): ("optimizer", e.instead, f"use the {e.instead} optimizer")
       for e in optimizers.OPTIMIZERS if e.instead},
    ("memory.mixed_precision", "fp16"): ("mixed_precision", "bf16", "use bf16 mixed precision"),
    ("memory.attention", "xformers"): ("attention", "sdpa", "use SDPA attention"),
}


def runnable_values(values: dict[str, Any], caps) -> tuple[dict[str, Any], list[str]]:
    """``values`` (run-TOML dotted keys) with each choice that cannot run here (``caps``, an
    engine.hardware.Capabilities) replaced by its INSTEAD, and a note per replacement."""
    out, notes = dict(values), []
    for key, value in values.items():
        reason = caps.why_not(key, value) if caps is not None else None
        if reason is None:
            continue
        instead = INSTEAD.get((key, value))
        if instead is None:
            notes.append(f"{reason}: choose another {key}")
            continue
        out[key] = instead[1]
        notes.append(f"{reason}: {key} = {instead[1]} instead")
    return out, notes


def _runnable_change(entry, o: PlanOptions, caps):
    """One _CHANGES entry as it can run here: (text, changes, run-TOML changes), its INSTEAD when
    it cannot run, or None when it does not apply, cannot run, or changes nothing."""
    text, changes, cfg_changes, applies = entry
    if not applies(o):
        return None
    for key, value in cfg_changes.items():
        if caps is None or caps.runs(key, value):
            continue
        instead = INSTEAD.get((key, value))
        if instead is None or not caps.runs(key, instead[1]):
            return None
        field_name, value_instead, text = instead
        changes = {**changes, field_name: value_instead}
        cfg_changes = {**cfg_changes, key: value_instead}
    if all(getattr(o, name) == value for name, value in changes.items()):
        return None
    return text, changes, cfg_changes


def suggest(options: Any, budget_bytes: float, *, margin: float = MARGIN, capabilities=None) -> list[Suggestion]:
    """Changes that lower the estimate, e.g. "enable gradient checkpointing: 11.2 -> 7.9 GB".

    Single changes come first (those that fit the budget, least intrusive first), then halving the
    batch, then one combined suggestion applying changes in order until the config fits.
    With ``capabilities`` (engine.hardware.Capabilities) no suggestion picks a choice that cannot
    run on this machine: its runnable alternative (INSTEAD) is offered, or nothing.
    """
    o = options if isinstance(options, PlanOptions) else PlanOptions.from_config(options)
    before = estimate_peak_vram(o).total_bytes
    singles: list[Suggestion] = []
    for entry in _CHANGES:
        change = _runnable_change(entry, o, capabilities)
        if change is None:
            continue
        text, changes, cfg_changes = change
        after = estimate_peak_vram(replace(o, **changes)).total_bytes
        if after < before - 1e6:
            fits = after <= budget_bytes * (1 - margin)
            singles.append(Suggestion(f"{text}: {fmt_gb(before)} -> {fmt_gb(after)}", after, changes, cfg_changes, fits))
    if o.batch_size > 1:
        nb = max(1, o.batch_size // 2)
        after = estimate_peak_vram(replace(o, batch_size=nb)).total_bytes
        singles.append(Suggestion(f"batch size {o.batch_size} -> {nb}: {fmt_gb(before)} -> {fmt_gb(after)}", after,
                                  {"batch_size": nb}, {"general.batch_size": nb},
                                  after <= budget_bytes * (1 - margin)))
    fitting = [s for s in singles if s.fits]
    rest = sorted((s for s in singles if not s.fits), key=lambda s: s.new_total)
    out = fitting + rest
    if not fitting:
        combo = _combined(o, budget_bytes, margin, before, capabilities)
        if combo is not None:
            out.insert(0, combo)
    return out


def _combined(o: PlanOptions, budget: float, margin: float, before: float, caps=None) -> Suggestion | None:
    cur, texts, changes, cfg = o, [], {}, {}
    for entry in _CHANGES:
        change = _runnable_change(entry, cur, caps)
        if change is None:
            continue
        text, ch, cfg_ch = change
        nxt = replace(cur, **ch)
        if estimate_peak_vram(nxt).total_bytes < estimate_peak_vram(cur).total_bytes - 1e6:
            cur = nxt
            texts.append(text)
            changes.update(ch)
            cfg.update(cfg_ch)
            if estimate_peak_vram(cur).total_bytes <= budget * (1 - margin):
                break
    while estimate_peak_vram(cur).total_bytes > budget * (1 - margin) and cur.batch_size > 1:
        cur = replace(cur, batch_size=max(1, cur.batch_size // 2))
        changes["batch_size"] = cur.batch_size
        cfg["general.batch_size"] = cur.batch_size
        if f"batch size {cur.batch_size}" not in texts:
            texts = [t for t in texts if not t.startswith("batch size")] + [f"batch size {cur.batch_size}"]
    if len(texts) < 2:
        return None
    after = estimate_peak_vram(cur).total_bytes
    return Suggestion(" + ".join(texts) + f": {fmt_gb(before)} -> {fmt_gb(after)}", after, changes, cfg,
                      after <= budget * (1 - margin))

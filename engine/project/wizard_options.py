"""The run keys the wizard's Options step edits: the one list of them, in form order.

Each entry is a dotted key and its short label; what kind of field edits it (a number, a switch,
a choice) and its choices come from the key's declaration in the schema (engine/config/schema.py),
so a key added here needs nothing else, and a choice added to the schema shows in the form.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from engine.config import schema

# (dotted key, label): the Options form shows them in this order.
WIZARD_OPTIONS: tuple[tuple[str, str], ...] = (
    ("model.pretrained_model_name_or_path", "Base model"),
    ("model.v2", "SD 2.x"),
    ("model.v_parameterization", "v-prediction"),
    ("train.mode", "Train"),
    ("train.max_train_epochs", "Epochs (empty=steps)"),
    ("train.max_train_steps", "Steps"),
    ("optimizer.learning_rate", "Learning rate"),
    ("optimizer.lr_scheduler", "LR schedule"),
    ("optimizer.lr_warmup_steps", "Warm-up steps"),
    ("optimizer.type", "Optimizer"),
    ("train.gradient_accumulation_steps", "Grad accumulation"),
    ("memory.mixed_precision", "Mixed precision"),
    ("memory.full_bf16", "Weights in bf16"),
    ("memory.fused_backward_pass", "Fused backward"),
    ("memory.gradient_checkpointing", "Grad checkpointing"),
    ("memory.attention", "Attention"),
    ("model.clip_skip", "CLIP skip"),
    ("model.max_token_length", "Max tokens"),
    ("train.train_text_encoder", "Train text encoder"),
    ("train.ema", "EMA"),
    ("train.ema_cpu_offload", "EMA in CPU memory"),
    ("cache.latents", "Cache latents"),
    ("train.output_dir", "Output folder"),
    ("train.output_name", "Run name"),
    ("save.format", "Save format"),
    ("save.precision", "Save precision"),
    ("save.every_n_epochs", "Save every N epochs"),
    ("sample.every_n_steps", "Sample every N steps"),
    ("sample.prompts", "Sample prompt"),
    ("train.seed", "Seed (empty=random)"),
)
OPTION_KEYS = tuple(key for key, _label in WIZARD_OPTIONS)

# Words a choice shows instead of its value, where the value alone says too little.
CHOICE_WORDS: dict[str, dict[Any, str]] = {"train.mode": {"full": "full fine-tune"}}
# A switch that may also be left to the engine ("auto"): the file's true / false / "auto".
AUTO_CHOICES: tuple[tuple[str, Any], ...] = (("auto", schema.AUTO), ("yes", True), ("no", False))


@dataclass(frozen=True)
class OptionField:
    """One field of the Options form.

    ``kind``: "select" (``choices`` are (words, value) pairs), "bool", "int", "float", "number"
    (an int, or a float where the key takes a fraction), "text", "prompt" (a list of prompts or a
    prompts file: the form edits one inline prompt); "?" after it: empty means unset.
    """

    key: str
    label: str
    kind: str
    choices: tuple[tuple[str, Any], ...] = ()
    doc: str = ""


def _kind(hint: Any, meta: dict[str, Any], key: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The field kind and choices a schema type and its declared choices call for."""
    args = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    optional = "?" if type(None) in args else ""
    args.discard(type(None))
    if meta.get("choices"):
        words = CHOICE_WORDS.get(key, {})
        return "select", tuple((words.get(c, str(c)), c) for c in meta["choices"] if c is not None)
    if list[str] in args:
        return "prompt" + optional, ()
    if args == {bool, str}:
        return "select", AUTO_CHOICES
    if args == {bool}:
        return "bool", ()
    if args == {int}:
        return "int" + optional, ()
    if args == {int, float}:
        return "number" + optional, ()
    if args == {float}:
        return "float" + optional, ()
    return "text" + optional, ()


def option_field(key: str, label: str | None = None) -> OptionField:
    # imported here: run_draft reads OPTION_KEYS from this module when it loads
    from engine.project.run_draft import field_meta, field_type

    meta = field_meta(key)
    kind, choices = _kind(field_type(key), meta, key)
    return OptionField(key, label or dict(WIZARD_OPTIONS).get(key, key), kind, choices, meta.get("doc", ""))


@cache
def option_fields() -> tuple[OptionField, ...]:
    """The Options form's fields, in order, each typed by the schema."""
    return tuple(option_field(key, label) for key, label in WIZARD_OPTIONS)

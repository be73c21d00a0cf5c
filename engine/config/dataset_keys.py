"""The keys of kohya's dataset tables: where each may stand, its kind and default, and the
check of one table's values (every problem recorded with its dotted key and line).

Pure Python: the wizard imports this before any torch is loaded.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from engine.config.dataset_specs import DatasetSpec, SubsetSpec
from engine.config.problems import Problem, ProblemList, current_spelling, did_you_mean

INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")

# Key kinds: "int", "number" (float or int), "bool", "str", plus special checkers below.
_INT, _NUM, _BOOL, _STR = "int", "number", "bool", "str"


def _with_defaults(spec: type, kinds: dict[str, str], **extra: Any) -> dict[str, tuple[str, Any]]:
    """name -> (kind, default): the defaults are the spec dataclass's own (written once, there);
    ``extra`` gives those of keys the spec does not hold."""
    defaults = {f.name: f.default for f in fields(spec)}
    return {name: (kind, extra[name] if name in extra else defaults[name]) for name, kind in kinds.items()}


# Keys allowed in [general] and [[datasets]] only (never in a subset).
DATASET_LEVEL: dict[str, tuple[str, Any]] = _with_defaults(DatasetSpec, {
    "batch_size": _INT, "resolution": "resolution", "enable_bucket": _BOOL, "bucket_no_upscale": _BOOL,
    "min_bucket_reso": _INT, "max_bucket_reso": _INT, "bucket_reso_steps": _INT,
    "network_multiplier": _NUM, "validation_split": _NUM, "validation_seed": _INT,
}, network_multiplier=1.0)

# Keys allowed at every level (subset → dataset → general → default).
SUBSET_LEVEL: dict[str, tuple[str, Any]] = _with_defaults(SubsetSpec, {
    "num_repeats": _INT, "keep_tokens": _INT, "token_warmup_min": _INT, "caption_dropout_every_n_epochs": _INT,
    "token_warmup_step": _NUM, "caption_dropout_rate": _NUM, "caption_tag_dropout_rate": _NUM,
    "shuffle_caption": _BOOL, "enable_wildcard": _BOOL, "flip_aug": _BOOL, "color_aug": _BOOL,
    "random_crop": _BOOL, "caption_separator": _STR, "keep_tokens_separator": _STR,
    "secondary_separator": _STR, "caption_prefix": _STR, "caption_suffix": _STR,
    "resize_interpolation": "interpolation", "face_crop_aug_range": "range2", "custom_attributes": "table",
    "caption_from_filename": _BOOL,   # sdft's key (kohya has none): see engine/data/captions.py
})

# Keys allowed only inside a subset. conditioning_data_dir is kohya's mask folder (its ControlNet
# subsets' key, which masked loss reads: one mask image per image, same stem); is_val marks a
# subset held out for the validation loss (kohya has no such key; named after its is_reg).
SUBSET_ONLY: dict[str, tuple[str, Any]] = _with_defaults(SubsetSpec, {
    "metadata_file": _STR, "image_dir": _STR, "alpha_mask": _BOOL, "conditioning_data_dir": _STR, "is_val": _BOOL,
}, metadata_file=None)

# DreamBooth keys: a different kohya training method.
FOREIGN_METHOD_KEYS = ("caption_extension", "class_tokens", "cache_info", "is_reg", "prior_loss_weight")
FOREIGN_HINT = "not the metadata fine-tuning method; build a metadata file with `sdft prepare`"
# kohya dataset keys for other trainers: refused unless at their default
NOT_IN_SDFT = {"network_multiplier": "it scales a LoRA network, and sdft fine-tunes the model itself"}
RATE_KEYS = ("caption_dropout_rate", "caption_tag_dropout_rate", "validation_split")
NON_NEGATIVE = ("keep_tokens", "token_warmup_min", "caption_dropout_every_n_epochs", "token_warmup_step")


# ---------------------------------------------------------------- problems with lines


def line_for(problems: ProblemList, key: str) -> int | None:
    """Line of ``key`` or of its nearest parent table (a missing key has no line of its own)."""
    probe = key
    while probe:
        if probe in problems.line_of:
            return problems.line_of[probe]
        if "." in probe:
            probe = probe.rsplit(".", 1)[0]
        elif "[" in probe:
            probe = probe.rsplit("[", 1)[0]
        else:
            break
    return None


def report(problems: ProblemList, key: str, message: str, hint: str = "", severity: str = "error") -> None:
    problems.items.append(Problem(key, message, hint, problems.file, line_for(problems, key), severity))


# ---------------------------------------------------------------- type checks


def _check_value(kind: str, value: Any) -> str | None:
    """An error text when ``value`` does not fit ``kind``, else None."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = (is_int or isinstance(value, float)) and not isinstance(value, bool)
    if kind == _INT:
        return None if is_int else "must be an integer"
    if kind == _NUM:
        if not is_num:
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if kind == _BOOL:
        return None if isinstance(value, bool) else "must be true or false"
    if kind == _STR:
        return None if isinstance(value, str) else "must be a string"
    if kind == "resolution":
        if isinstance(value, int) and not isinstance(value, bool):
            return None if value > 0 else "must be positive"
        if (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return None if all(v > 0 for v in value) else "must be positive"
        return "must be an integer or two integers [width, height]"
    if kind == "interpolation":
        if value in INTERPOLATIONS:
            return None
        return "must be one of " + ", ".join(INTERPOLATIONS)
    if kind == "range2":
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        return None if ok else "must be two numbers [low, high]"
    if kind == "table":
        return None if isinstance(value, dict) else "must be a table"
    raise AssertionError(kind)


_TYPE_HINTS = {
    _INT: "write a whole number without quotes, e.g. 2",
    _NUM: "write a number without quotes, e.g. 0.1",
    _BOOL: "write true or false without quotes",
    _STR: 'write a quoted string, e.g. ","',
    "resolution": "e.g. resolution = 512 or resolution = [768, 512]",
    "interpolation": 'e.g. resize_interpolation = "lanczos"',
    "range2": "e.g. face_crop_aug_range = [2.0, 4.0]",
    "table": "write it as an inline table { name = value }",
}


def _normalise(kind: str, value: Any) -> Any:
    if kind == "resolution":
        return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if kind == "range2":
        return (float(value[0]), float(value[1]))
    if kind == "table":
        return dict(value)
    return value


def validate_table(table: Any, prefix: str, allowed: dict[str, tuple[str, Any]], level: str,
                    problems: ProblemList, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Type-check one table; returns the good values (normalised). Records every problem."""
    good: dict[str, Any] = {}
    if not isinstance(table, dict):
        report(problems, prefix, f"must be a table, got {table!r}", "write it as [[datasets]] / [[datasets.subsets]] tables of key = value lines")
        return good
    known_everywhere = {**DATASET_LEVEL, **SUBSET_LEVEL, **SUBSET_ONLY}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name in skip:
            continue
        name = current_spelling(name, table, key, lambda *a: report(problems, *a))
        if name is None:
            continue
        if name in FOREIGN_METHOD_KEYS:
            report(problems, key, f"{name} belongs to kohya's DreamBooth/ControlNet method", FOREIGN_HINT)
            continue
        if name not in allowed:
            if name in SUBSET_ONLY:
                report(problems, key, f"{name} is only allowed inside [[datasets.subsets]]",
                        "move it into a [[datasets.subsets]] table")
            elif name in DATASET_LEVEL and level == "subset":
                report(problems, key, f"{name} is a dataset-level key, not allowed in a subset",
                        "move it to the [[datasets]] table or to [general]")
            elif name in known_everywhere:
                report(problems, key, f"{name} is not allowed here", "[general] holds defaults, [[datasets]] dataset-level keys, [[datasets.subsets]] per-folder keys")
            else:
                report(problems, key, "unknown key", did_you_mean(name, allowed))
            continue
        kind, _default = allowed[name]
        error = _check_value(kind, value)
        if error:
            report(problems, key, f"{error}, got {value!r}", _TYPE_HINTS.get(kind, ""))
            continue
        if name in NOT_IN_SDFT:
            # accepted at kohya's default (its GUI writes them out); any other value would do nothing
            if value == DATASET_LEVEL[name][1]:
                report(problems, key, f"{name} at its default: nothing to do", "", "note")
            else:
                report(problems, key, f"{name} is not in sdft: {NOT_IN_SDFT[name]}", f"remove {name}")
                continue
        if name in RATE_KEYS and not 0 <= value <= 1:
            report(problems, key, f"must be between 0 and 1, got {value!r}", "a probability: 0 = never, 1 = always")
            continue
        if name == "validation_split" and value >= 1:
            report(problems, key, f"must be below 1, got {value!r} (nothing would be left to train)",
                   "e.g. validation_split = 0.1 holds out a tenth of each subset's images")
            continue
        if name == "batch_size" and value < 1:
            report(problems, key, f"must be at least 1, got {value!r}", "use batch_size = 1 or more")
            continue
        if name in NON_NEGATIVE and value < 0:
            report(problems, key, f"must not be negative, got {value!r}", "use 0 to switch it off")
            continue
        if name in ("min_bucket_reso", "max_bucket_reso") and value <= 0:
            report(problems, key, f"must be positive, got {value!r}", "e.g. 256 / 1024")
            continue
        if name == "bucket_reso_steps":
            if value <= 0 or value % 8:
                report(problems, key, f"must be a positive multiple of 8, got {value!r}",
                        "latents are 1/8 of the image size; 64 is the usual value")
                continue
            if value % 64:
                report(problems, key, f"{value} is not a multiple of 64 (kohya's fine_tune refuses it)",
                        "sdft accepts it; use 64 for kohya parity", "warning")
        if name == "face_crop_aug_range" and value[0] > value[1]:
            report(problems, key, f"low must not exceed high, got {value!r}", "e.g. [2.0, 4.0]")
            continue
        good[name] = _normalise(kind, value)
    return good

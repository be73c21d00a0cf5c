"""Where each key of kohya's dataset tables may stand, and the check of one table's values
(every problem recorded with its dotted key and line).

Each key's type, default, bounds and help are its field in dataset_specs.py, checked by
engine/config/fields.py like every run-file key; this module adds the placement rules and the
checks that span a key's meaning (refused kohya keys, bucket steps). Pure Python: the wizard
imports this before any torch is loaded.
"""

from __future__ import annotations

import typing
from dataclasses import Field, fields
from typing import Any

from engine.config.dataset_specs import INTERPOLATIONS, DatasetSpec, SubsetSpec  # noqa: F401 - re-exported
from engine.config.fields import check_value
from engine.config.problems import DEPRECATED_SPELLINGS, Problem, ProblemList, current_spelling, did_you_mean

# Keys allowed in [general] and [[datasets]] only (never in a subset).
DATASET_LEVEL = ("batch_size", "resolution", "enable_bucket", "bucket_no_upscale", "min_bucket_reso",
                 "max_bucket_reso", "bucket_reso_steps", "network_multiplier", "validation_split", "validation_seed")

# Keys allowed at every level (subset → dataset → general → default).
SUBSET_LEVEL = (
    "num_repeats", "keep_tokens", "token_warmup_min", "caption_dropout_every_n_epochs", "token_warmup_step",
    "caption_dropout_rate", "caption_tag_dropout_rate", "shuffle_caption", "enable_wildcard", "flip_aug",
    "color_aug", "random_crop", "caption_separator", "keep_tokens_separator", "secondary_separator",
    "caption_prefix", "caption_suffix", "resize_interpolation", "face_crop_aug_range", "custom_attributes",
    "caption_from_filename",   # sdft's key (kohya has none): see engine/data/captions.py
    "caption_extension", "class_tokens", "cache_info",   # folder subsets only (FOLDER_KEYS)
)

# Keys allowed only inside a subset. conditioning_data_dir is kohya's mask folder (its ControlNet
# subsets' key, which masked loss reads: one mask image per image, same stem); is_val marks a
# subset held out for the validation loss (kohya has no such key; named after its is_reg).
SUBSET_ONLY = ("metadata_file", "image_dir", "alpha_mask", "conditioning_data_dir", "is_val", "is_reg")

# Keys of a folder subset (image_dir without metadata_file: kohya's DreamBooth method). A subset
# or dataset table that reads a metadata file may not hold them (kohya's schema refuses them there).
FOLDER_KEYS = ("caption_extension", "class_tokens", "cache_info", "is_reg")


def _declared(spec: type, names: tuple[str, ...]) -> dict[str, tuple[Field[Any], Any]]:
    hints = typing.get_type_hints(spec)
    by_name = {f.name: f for f in fields(spec)}
    return {name: (by_name[name], hints[name]) for name in names}


# name -> (its dataclass field, its type hint): what validate_table checks a value against
FILE_KEYS: dict[str, tuple[Field[Any], Any]] = {**_declared(DatasetSpec, DATASET_LEVEL),
                                           **_declared(SubsetSpec, SUBSET_LEVEL + SUBSET_ONLY)}

# kohya command options sometimes written into a dataset table, where kohya does not read them.
FOREIGN_METHOD_KEYS = ("prior_loss_weight",)
FOREIGN_HINT = ("prior_loss_weight is a train_db.py command option, not a dataset key; sdft weighs is_reg "
                "images' loss like the others (kohya's default 1.0): delete it")
# kohya dataset keys that do nothing in sdft: accepted at their default only
NOT_IN_SDFT = {"network_multiplier": "it scales a LoRA network, and sdft fine-tunes the model itself",
               "cache_info": "sdft reads the image sizes from the file headers at every start (milliseconds "
                             "per image), so there is no size cache to keep"}


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


# ---------------------------------------------------------------- one table


def validate_table(table: Any, prefix: str, allowed: tuple[str, ...], level: str,
                   problems: ProblemList, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check one table whose keys may be ``allowed``; returns the good values (normalised: paths
    as Path, resolution as (width, height)). Records every problem."""
    good: dict[str, Any] = {}
    if not isinstance(table, dict):
        report(problems, prefix, f"must be a table, got {table!r}", "write it as [[datasets]] / [[datasets.subsets]] tables of key = value lines")
        return good
    name: str   # a TOML table's keys are strings
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name in skip:
            continue
        if DEPRECATED_SPELLINGS.get(name, name) not in allowed:   # refused either way: no "rename it" note
            _report_misplaced(problems, key, DEPRECATED_SPELLINGS.get(name, name), level, allowed)
            continue
        spelled = current_spelling(name, table, key, lambda *a: report(problems, *a))
        if spelled is None:
            continue
        name = spelled
        if name not in allowed:
            _report_misplaced(problems, key, name, level, allowed)
            continue
        checked, problem = check_value(*FILE_KEYS[name], value)
        if problem:
            report(problems, key, *problem)
        elif _fits_its_meaning(problems, key, name, checked):
            good[name] = checked
    return good


def key_problem(name: str, value: Any, level: str = "dataset") -> str | None:
    """What the check of a ``[[datasets]]`` (level "dataset") or subset table says about
    ``name = value`` on its own, or None when it fits."""
    problems = ProblemList(file="")
    allowed = DATASET_LEVEL + SUBSET_LEVEL if level == "dataset" else SUBSET_LEVEL + SUBSET_ONLY
    validate_table({name: value}, level, allowed, level, problems)
    return next((p.message for p in problems.items if p.severity == "error"), None)


def report_folder_key(problems: ProblemList, key: str) -> None:
    """A folder subset's key in a table that reads a metadata file: kohya refuses it there."""
    written = key.rsplit(".", 1)[-1]
    if DEPRECATED_SPELLINGS.get(written, written) == "caption_extension":
        report(problems, key, f"{written} is not needed with a metadata file: the captions come from "
               "metadata_file", "delete it (`sdft prepare` reads .caption sidecars when it builds the metadata "
               "file; `--caption-extension` picks another extension)")
    else:
        report(problems, key, f"{written} is a folder subset's key (image_dir without metadata_file, kohya's "
               "DreamBooth method), and the subsets it applies to read metadata files",
               "delete it, or drop metadata_file so the subset reads the caption files in image_dir")


def _report_misplaced(problems: ProblemList, key: str, name: str, level: str, allowed: tuple[str, ...]) -> None:
    if name in FOLDER_KEYS:   # left out of `allowed` by a table that reads a metadata file
        report_folder_key(problems, key)
    elif name in FOREIGN_METHOD_KEYS:
        report(problems, key, f"{name} is not a dataset key", FOREIGN_HINT)
    elif name in SUBSET_ONLY:
        report(problems, key, f"{name} is only allowed inside [[datasets.subsets]]",
               "move it into a [[datasets.subsets]] table")
    elif name in DATASET_LEVEL and level == "subset":
        report(problems, key, f"{name} is a dataset-level key, not allowed in a subset",
               "move it to the [[datasets]] table or to [general]")
    elif name in FILE_KEYS:
        report(problems, key, f"{name} is not allowed here", "[general] holds defaults, [[datasets]] "
               "dataset-level keys, [[datasets.subsets]] per-folder keys")
    else:
        report(problems, key, "unknown key", did_you_mean(name, allowed))


def _fits_its_meaning(problems: ProblemList, key: str, name: str, value: Any) -> bool:
    """The checks a type and bounds cannot say; False when the value is refused."""
    if name in NOT_IN_SDFT:
        # accepted at kohya's default (its GUI writes them out); any other value would do nothing
        if value != FILE_KEYS[name][0].default:
            report(problems, key, f"{name} is not in sdft: {NOT_IN_SDFT[name]}", f"remove {name}")
            return False
        report(problems, key, f"{name} at its default: nothing to do", "", "note")
    if name == "validation_split" and value >= 1:
        report(problems, key, f"must be below 1, got {value!r} (nothing would be left to train)",
               "e.g. validation_split = 0.1 holds out a tenth of each subset's images")
        return False
    if name == "bucket_reso_steps":
        if value <= 0 or value % 8:
            report(problems, key, f"must be a positive multiple of 8, got {value!r}",
                   "latents are 1/8 of the image size; 64 is the usual value")
            return False
        if value % 64:
            report(problems, key, f"{value} is not a multiple of 64 (kohya's fine_tune refuses it)",
                   "sdft accepts it; use 64 for kohya parity", "warning")
    return True

"""kohya's dataset TOML (fine-tuning / metadata method), parsed and validated.

The tables ``[general]`` and ``[[datasets]]`` (each with ``[[datasets.subsets]]``) are accepted
unchanged, inline in a run TOML or in their own file (``dataset_config = "file.toml"``, or a
``.json`` with the same shape). Values merge per field: subset → dataset → general → default.
Every problem is collected at once with its dotted key, file:line and a hint.

Pure Python: the wizard imports this before any torch is loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.problems import Problem, ProblemList, current_spelling, did_you_mean

INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")

# Key kinds: "int", "number" (float or int), "bool", "str", plus special checkers below.
_INT, _NUM, _BOOL, _STR = "int", "number", "bool", "str"

# Keys allowed in [general] and [[datasets]] only (never in a subset).
DATASET_LEVEL: dict[str, tuple[str, Any]] = {
    "batch_size": (_INT, 1),
    "resolution": ("resolution", None),
    "enable_bucket": (_BOOL, False),
    "bucket_no_upscale": (_BOOL, False),
    "min_bucket_reso": (_INT, 256),
    "max_bucket_reso": (_INT, 1024),
    "bucket_reso_steps": (_INT, 64),
    "network_multiplier": (_NUM, 1.0),
    "validation_split": (_NUM, 0.0),
    "validation_seed": (_INT, None),
}

# Keys allowed at every level (subset → dataset → general → default).
SUBSET_LEVEL: dict[str, tuple[str, Any]] = {
    "num_repeats": (_INT, 1),
    "keep_tokens": (_INT, 0),
    "token_warmup_min": (_INT, 1),
    "caption_dropout_every_n_epochs": (_INT, 0),
    "token_warmup_step": (_NUM, 0),
    "caption_dropout_rate": (_NUM, 0.0),
    "caption_tag_dropout_rate": (_NUM, 0.0),
    "shuffle_caption": (_BOOL, False),
    "enable_wildcard": (_BOOL, False),
    "flip_aug": (_BOOL, False),
    "color_aug": (_BOOL, False),
    "random_crop": (_BOOL, False),
    "caption_separator": (_STR, ","),
    "keep_tokens_separator": (_STR, ""),
    "secondary_separator": (_STR, None),
    "caption_prefix": (_STR, None),
    "caption_suffix": (_STR, None),
    "resize_interpolation": ("interpolation", None),
    "face_crop_aug_range": ("range2", None),
    "custom_attributes": ("table", None),
}

# Keys allowed only inside a subset.
SUBSET_ONLY: dict[str, tuple[str, Any]] = {
    "metadata_file": (_STR, None),
    "image_dir": (_STR, None),
    "alpha_mask": (_BOOL, False),
}

# DreamBooth / ControlNet keys: a different kohya training method.
FOREIGN_METHOD_KEYS = ("caption_extension", "class_tokens", "cache_info", "is_reg",
                       "conditioning_data_dir", "prior_loss_weight")
FOREIGN_HINT = "not the metadata fine-tuning method; build a metadata file with `sdft prepare`"
# kohya dataset keys for other trainers or features sdft lacks: refused unless at their default
NOT_IN_SDFT = {"network_multiplier": "it scales a LoRA network, and sdft fine-tunes the model itself",
               "validation_split": "no validation loss yet; every image trains",
               "validation_seed": "no validation loss yet; every image trains"}
RATE_KEYS = ("caption_dropout_rate", "caption_tag_dropout_rate", "validation_split")
NON_NEGATIVE = ("keep_tokens", "token_warmup_min", "caption_dropout_every_n_epochs", "token_warmup_step")


@dataclass
class SubsetSpec:
    """One ``[[datasets.subsets]]`` table with every value resolved (merge order applied)."""

    metadata_file: Path
    image_dir: Path | None = None
    num_repeats: int = 1
    keep_tokens: int = 0
    token_warmup_min: int = 1
    caption_dropout_every_n_epochs: int = 0
    token_warmup_step: float = 0
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    shuffle_caption: bool = False
    enable_wildcard: bool = False
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    caption_separator: str = ","
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    resize_interpolation: str | None = None
    face_crop_aug_range: tuple[float, float] | None = None
    custom_attributes: dict | None = None
    alpha_mask: bool = False
    key: str = ""                       # dotted key, e.g. "datasets[0].subsets[1]"

    @property
    def cacheable(self) -> bool:
        """random_crop / color_aug change pixels per draw, so latents cannot be cached."""
        return not (self.random_crop or self.color_aug)


@dataclass
class DatasetSpec:
    """One ``[[datasets]]`` table: bucketing and batch settings plus its subsets."""

    subsets: list[SubsetSpec] = field(default_factory=list)
    batch_size: int = 1
    resolution: tuple[int, int] | None = None    # None = from the model (512, or 768 for 768-v)
    enable_bucket: bool = False
    bucket_no_upscale: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    key: str = ""


@dataclass
class DatasetBlueprint:
    """Every dataset of a run, resolved; ``source`` is the file it came from (or None)."""

    datasets: list[DatasetSpec] = field(default_factory=list)
    source: str | None = None

    @property
    def subsets(self) -> list[SubsetSpec]:
        return [s for d in self.datasets for s in d.subsets]


def round_bucket_limits(min_b: int, max_b: int, d: int) -> tuple[int, int]:
    """min rounded down, max rounded up to multiples of the step."""
    if d <= 0:
        return min_b, max_b
    return (min_b // d) * d, -((-max_b) // d) * d


# ---------------------------------------------------------------- problems with lines


def _line_for(problems: ProblemList, key: str) -> int | None:
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


def _report(problems: ProblemList, key: str, message: str, hint: str = "", severity: str = "error") -> None:
    problems.items.append(Problem(key, message, hint, problems.file, _line_for(problems, key), severity))


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


def _validate_table(table: Any, prefix: str, allowed: dict[str, tuple[str, Any]], level: str,
                    problems: ProblemList, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Type-check one table; returns the good values (normalised). Records every problem."""
    good: dict[str, Any] = {}
    if not isinstance(table, dict):
        _report(problems, prefix, f"must be a table, got {table!r}", "write it as [[datasets]] / [[datasets.subsets]] tables of key = value lines")
        return good
    known_everywhere = {**DATASET_LEVEL, **SUBSET_LEVEL, **SUBSET_ONLY}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name in skip:
            continue
        name = current_spelling(name, table, key, lambda *a: _report(problems, *a))
        if name is None:
            continue
        if name in FOREIGN_METHOD_KEYS:
            _report(problems, key, f"{name} belongs to kohya's DreamBooth/ControlNet method", FOREIGN_HINT)
            continue
        if name not in allowed:
            if name in SUBSET_ONLY:
                _report(problems, key, f"{name} is only allowed inside [[datasets.subsets]]",
                        "move it into a [[datasets.subsets]] table")
            elif name in DATASET_LEVEL and level == "subset":
                _report(problems, key, f"{name} is a dataset-level key, not allowed in a subset",
                        "move it to the [[datasets]] table or to [general]")
            elif name in known_everywhere:
                _report(problems, key, f"{name} is not allowed here", "[general] holds defaults, [[datasets]] dataset-level keys, [[datasets.subsets]] per-folder keys")
            else:
                _report(problems, key, "unknown key", did_you_mean(name, allowed))
            continue
        kind, _default = allowed[name]
        error = _check_value(kind, value)
        if error:
            _report(problems, key, f"{error}, got {value!r}", _TYPE_HINTS.get(kind, ""))
            continue
        if name in NOT_IN_SDFT:
            # accepted at kohya's default (its GUI writes them out); any other value would do nothing
            if value == DATASET_LEVEL[name][1]:
                _report(problems, key, f"{name} at its default: nothing to do", "", "note")
            else:
                _report(problems, key, f"{name} is not in sdft: {NOT_IN_SDFT[name]}", f"remove {name}")
                continue
        if name in RATE_KEYS and not 0 <= value <= 1:
            _report(problems, key, f"must be between 0 and 1, got {value!r}", "a probability: 0 = never, 1 = always")
            continue
        if name == "batch_size" and value < 1:
            _report(problems, key, f"must be at least 1, got {value!r}", "use batch_size = 1 or more")
            continue
        if name in NON_NEGATIVE and value < 0:
            _report(problems, key, f"must not be negative, got {value!r}", "use 0 to switch it off")
            continue
        if name in ("min_bucket_reso", "max_bucket_reso") and value <= 0:
            _report(problems, key, f"must be positive, got {value!r}", "e.g. 256 / 1024")
            continue
        if name == "bucket_reso_steps":
            if value <= 0 or value % 8:
                _report(problems, key, f"must be a positive multiple of 8, got {value!r}",
                        "latents are 1/8 of the image size; 64 is the usual value")
                continue
            if value % 64:
                _report(problems, key, f"{value} is not a multiple of 64 (kohya's fine_tune refuses it)",
                        "sdft accepts it; use 64 for kohya parity", "warning")
        if name == "face_crop_aug_range" and value[0] > value[1]:
            _report(problems, key, f"low must not exceed high, got {value!r}", "e.g. [2.0, 4.0]")
            continue
        good[name] = _normalise(kind, value)
    return good


# ---------------------------------------------------------------- parse


def _resolve_path(raw: str, base_dir: Path) -> Path:
    """Relative to the TOML's folder first, then the current folder."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    first = Path(base_dir) / path
    if first.exists():
        return first
    cwd = Path.cwd() / path
    return cwd if cwd.exists() else first


def parse_dataset_tables(tables: dict, *, problems: ProblemList, base_dir: str | Path = ".") -> DatasetBlueprint:
    """``{"general": {...}, "datasets": [...]}`` → DatasetBlueprint; problems collected, not raised.

    The caller raises with ``problems.raise_if_errors()`` once everything else is checked.
    """
    base_dir = Path(base_dir)
    blueprint = DatasetBlueprint(source=problems.file)
    if not isinstance(tables, dict):
        _report(problems, "<file>", "a dataset config must be a table", "use [general] and [[datasets]]")
        return blueprint
    for name in tables:
        if name not in ("general", "datasets"):
            hint = FOREIGN_HINT if name in FOREIGN_METHOD_KEYS else did_you_mean(name, ("general", "datasets"))
            _report(problems, name, "unknown top-level key in a dataset config", hint)
    general = _validate_table(tables.get("general", {}), "general",
                              {**DATASET_LEVEL, **SUBSET_LEVEL}, "general", problems)
    datasets = tables.get("datasets", [])
    if not isinstance(datasets, list):
        _report(problems, "datasets", "must be an array of tables", "write each dataset as [[datasets]]")
        return blueprint
    if not datasets:
        _report(problems, "datasets", "no [[datasets]] table", "add [[datasets]] with a [[datasets.subsets]] table")
    for di, raw in enumerate(datasets):
        spec = _parse_dataset(raw, f"datasets[{di}]", general, problems, base_dir)
        if spec is not None:
            blueprint.datasets.append(spec)
    return blueprint


def _merged(name: str, levels: list[dict], allowed: dict) -> Any:
    for values in levels:
        if name in values:
            return values[name]
    return allowed[name][1]


def _parse_dataset(raw: Any, prefix: str, general: dict, problems: ProblemList, base_dir: Path) -> DatasetSpec | None:
    if not isinstance(raw, dict):
        _report(problems, prefix, "must be a table", "write it as [[datasets]]")
        return None
    values = _validate_table(raw, prefix, {**DATASET_LEVEL, **SUBSET_LEVEL}, "dataset", problems, skip=("subsets",))
    levels = [values, general]
    spec = DatasetSpec(key=prefix)
    for name in ("batch_size", "resolution", "enable_bucket", "bucket_no_upscale",
                 "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
        setattr(spec, name, _merged(name, levels, DATASET_LEVEL))
    _check_bucket_limits(spec, prefix, levels, problems)
    _note_resolution(spec, prefix, levels, problems)

    subsets = raw.get("subsets", [])
    if not isinstance(subsets, list) or not subsets:
        _report(problems, f"{prefix}.subsets", "a dataset needs at least one [[datasets.subsets]] table",
                "add [[datasets.subsets]] with metadata_file (and image_dir)")
        return spec
    seen_metadata: set[Path] = set()
    for si, sraw in enumerate(subsets):
        sub = _parse_subset(sraw, f"{prefix}.subsets[{si}]", levels, problems, base_dir)
        if sub is None:
            continue
        if sub.num_repeats < 1:
            _report(problems, f"{sub.key}.num_repeats", f"num_repeats = {sub.num_repeats} < 1: subset skipped",
                    "use num_repeats = 1 or more to train on it", "warning")
            continue
        resolved = sub.metadata_file.resolve()
        if resolved in seen_metadata:
            _report(problems, f"{sub.key}.metadata_file",
                    f"{sub.metadata_file} is already used by another subset of this dataset: subset skipped",
                    "raise num_repeats of the first subset instead", "warning")
            continue
        seen_metadata.add(resolved)
        spec.subsets.append(sub)
    return spec


def _check_bucket_limits(spec: DatasetSpec, prefix: str, levels: list[dict], problems: ProblemList) -> None:
    d = spec.bucket_reso_steps
    if d <= 0 or d % 8:
        return
    min_b, max_b = round_bucket_limits(spec.min_bucket_reso, spec.max_bucket_reso, d)

    def where(name: str) -> str:
        return f"{prefix}.{name}" if name in levels[0] else f"general.{name}" if name in levels[1] else f"{prefix}.{name}"

    if (min_b, max_b) != (spec.min_bucket_reso, spec.max_bucket_reso) and spec.enable_bucket:
        _report(problems, where("min_bucket_reso"),
                f"bucket limits rounded to multiples of {d}: min {spec.min_bucket_reso}→{min_b}, "
                f"max {spec.max_bucket_reso}→{max_b}", "", "warning")
    if min_b <= 0:
        _report(problems, where("min_bucket_reso"), f"rounds down to {min_b}",
                f"use at least bucket_reso_steps ({d})")
    if min_b > max_b:
        _report(problems, where("min_bucket_reso"), f"min_bucket_reso {min_b} > max_bucket_reso {max_b}",
                "swap them")
    if spec.resolution is not None and spec.enable_bucket and not spec.bucket_no_upscale:
        w, h = spec.resolution
        if min_b > min(w, h):
            _report(problems, where("min_bucket_reso"),
                    f"min_bucket_reso {min_b} (after rounding) is larger than the resolution's short side {min(w, h)}",
                    f"use min_bucket_reso ≤ {min(w, h)}")
        if max_b < max(w, h):
            _report(problems, where("max_bucket_reso"),
                    f"max_bucket_reso {max_b} (after rounding) is smaller than the resolution's long side {max(w, h)}",
                    f"use max_bucket_reso ≥ {max(w, h)}")


def _note_resolution(spec: DatasetSpec, prefix: str, levels: list[dict], problems: ProblemList) -> None:
    """A resolution that is not a multiple of 64 is used as kohya uses it; say how."""
    if spec.resolution is None or not any(side % 64 for side in spec.resolution):
        return
    w, h = spec.resolution
    key = f"{prefix}.resolution" if "resolution" in levels[0] else "general.resolution"
    if spec.enable_bucket and not spec.bucket_no_upscale and spec.bucket_reso_steps > 0:
        d = spec.bucket_reso_steps
        side = int(math.sqrt(w * h) // d) * d
        what = (f"as in kohya, it only sets the bucket area ({w}x{h} = {w * h:,} pixels); the buckets are "
                f"multiples of bucket_reso_steps ({d}), the square one {side}x{side}")
    elif spec.enable_bucket:
        what = (f"as in kohya, with bucket_no_upscale it only sets the largest area ({w * h:,} pixels); "
                f"buckets are multiples of bucket_reso_steps ({spec.bucket_reso_steps})")
    else:
        what = f"as in kohya, every image is resized and centre-cropped to exactly {w}x{h}"
    _report(problems, key, f"{w}x{h} is not a multiple of 64: {what}",
            "SD models are trained at multiples of 64 (512, 768)", "note")


def check_resolution(spec: DatasetSpec, resolution: tuple[int, int]) -> list[str]:
    """The same limit checks once a model-derived resolution is known (messages, empty = fine)."""
    if not spec.enable_bucket or spec.bucket_no_upscale:
        return []
    min_b, max_b = round_bucket_limits(spec.min_bucket_reso, spec.max_bucket_reso, spec.bucket_reso_steps)
    out = []
    if min_b > min(resolution):
        out.append(f"{spec.key}: min_bucket_reso {min_b} is larger than the resolution's short side {min(resolution)}")
    if max_b < max(resolution):
        out.append(f"{spec.key}: max_bucket_reso {max_b} is smaller than the resolution's long side {max(resolution)}")
    return out


def _parse_subset(raw: Any, prefix: str, levels: list[dict], problems: ProblemList, base_dir: Path) -> SubsetSpec | None:
    if not isinstance(raw, dict):
        _report(problems, prefix, "must be a table", "write it as [[datasets.subsets]]")
        return None
    values = _validate_table(raw, prefix, {**SUBSET_LEVEL, **SUBSET_ONLY}, "subset", problems)
    ok = True
    if "metadata_file" not in raw:
        _report(problems, f"{prefix}.metadata_file", "a subset without metadata_file", FOREIGN_HINT)
        ok = False
    metadata_file = None
    if "metadata_file" in values:
        metadata_file = _resolve_path(values["metadata_file"], base_dir)
        if not metadata_file.is_file():
            _report(problems, f"{prefix}.metadata_file", f"metadata file not found: {metadata_file}",
                    "check the path (relative paths start at the TOML's folder); build one with `sdft prepare`")
            ok = False
    image_dir = None
    if "image_dir" in values:
        image_dir = _resolve_path(values["image_dir"], base_dir)
        if not image_dir.is_dir():
            _report(problems, f"{prefix}.image_dir", f"image folder not found: {image_dir}",
                    "check the path (relative paths start at the TOML's folder)")
            ok = False
    if values.get("alpha_mask"):
        _report(problems, f"{prefix}.alpha_mask", "masked loss not used: alpha_mask is ignored",
                "transparent areas are composited on white", "warning")
    if not ok or metadata_file is None:
        return None
    levels = [values, *levels]
    sub = SubsetSpec(metadata_file=metadata_file, image_dir=image_dir, key=prefix)
    for name in SUBSET_LEVEL:
        setattr(sub, name, _merged(name, levels, SUBSET_LEVEL))
    sub.alpha_mask = bool(values.get("alpha_mask", False))
    if sub.face_crop_aug_range is not None:
        _report(problems, f"{prefix}.face_crop_aug_range",
                "face_crop_aug_range is ignored (needs face info in file names and no bucketing)", "", "warning")
    return sub


def load_dataset_file(path: str | Path, problems: ProblemList) -> DatasetBlueprint:
    """A separate kohya dataset file (``.toml`` or ``.json``); problems are recorded with lines.

    ``problems`` may belong to the run TOML: its file and line map are restored afterwards,
    so the dataset file's problems carry the dataset file's name and lines.
    """
    path = Path(path)
    saved_file, saved_lines = problems.file, problems.line_of
    problems.file = str(path)
    problems.line_of = {}
    try:
        from engine.config.problems import ConfigError
        from engine.config.toml_text import parse_toml, read_config_text

        try:
            text, notes = read_config_text(path, key="dataset_config")
        except ConfigError as exc:
            problems.items.extend(exc.problems)
            return DatasetBlueprint(source=str(path))
        problems.items.extend(notes)
        if path.suffix.lower() == ".json":
            try:
                tables = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.items.append(Problem("<file>", f"not valid JSON: {exc.msg}", "fix the syntax",
                                              str(path), exc.lineno))
                return DatasetBlueprint(source=str(path))
        else:
            from engine.config.lines import key_lines

            try:
                tables = parse_toml(text, str(path)).unwrap()
            except ConfigError as exc:
                problems.items.extend(exc.problems)
                return DatasetBlueprint(source=str(path))
            problems.line_of = key_lines(text)
        blueprint = parse_dataset_tables(tables, problems=problems, base_dir=path.parent)
        blueprint.source = str(path)
        return blueprint
    finally:
        problems.file, problems.line_of = saved_file, saved_lines


def single_folder_blueprint(metadata_file: str | Path, image_dir: str | Path | None, *,
                            resolution: tuple[int, int] | None = None, batch_size: int = 1,
                            enable_bucket: bool = True, **subset_options: Any) -> DatasetBlueprint:
    """One dataset with one subset, the shape ``in_json`` + ``train_data_dir`` had in kohya.

    Used by the demo and the wizard; values are validated as if they came from a TOML.
    """
    problems = ProblemList(file="<generated>")
    subset = {"metadata_file": str(metadata_file), **subset_options}
    if image_dir is not None:
        subset["image_dir"] = str(image_dir)
    dataset: dict[str, Any] = {"batch_size": batch_size, "enable_bucket": enable_bucket, "subsets": [subset]}
    if resolution is not None:
        dataset["resolution"] = list(resolution)
    blueprint = parse_dataset_tables({"datasets": [dataset]}, problems=problems, base_dir=Path.cwd())
    problems.raise_if_errors()
    return blueprint

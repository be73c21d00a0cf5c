"""kohya's dataset TOML, parsed and validated: subsets of the fine-tuning method (a metadata file)
and of the DreamBooth method (a folder of images and caption files, docs/formats.md "Folder
datasets").

The tables ``[general]`` and ``[[datasets]]`` (each with ``[[datasets.subsets]]``) are accepted
unchanged, inline in a run TOML or in their own file (``dataset_config = "file.toml"``, or a
``.json`` with the same shape). Values merge per field: subset → dataset → general → default.
Every problem is collected at once with its dotted key, file:line and a hint. The key tables
and the check of one table's values are in dataset_keys.py; the resolved shapes in
dataset_specs.py (both re-exported here).

Pure Python: the wizard imports this before any torch is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from engine.config.dataset_keys import (  # noqa: F401 - re-exported: the tables' one public home
    DATASET_LEVEL,
    FILE_KEYS,
    FOLDER_KEYS,
    FOREIGN_HINT,
    FOREIGN_METHOD_KEYS,
    NOT_IN_SDFT,
    SUBSET_LEVEL,
    SUBSET_ONLY,
    report_folder_key,
)
from engine.config.dataset_keys import report as _report
from engine.config.dataset_keys import validate_table as _validate_table
from engine.config.dataset_specs import (  # noqa: F401 - re-exported
    INTERPOLATIONS,
    DatasetBlueprint,
    DatasetSpec,
    SubsetSpec,
    check_resolution,
    round_bucket_limits,
)
from engine.config.problems import FILE_KEY, Problem, ProblemList, did_you_mean, did_you_mean_file
from engine.user_files import file_problem

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


def parse_dataset_tables(tables: object, *, problems: ProblemList, base_dir: str | Path = ".") -> DatasetBlueprint:
    """``{"general": {...}, "datasets": [...]}`` → DatasetBlueprint; problems collected, not raised.

    The caller raises with ``problems.raise_if_errors()`` once everything else is checked.
    """
    base_dir = Path(base_dir)
    blueprint = DatasetBlueprint(source=problems.file)
    if not isinstance(tables, dict):
        _report(problems, FILE_KEY, "a dataset config must be a table", "use [general] and [[datasets]]")
        return blueprint
    for name in tables:
        if name not in ("general", "datasets"):
            hint = FOREIGN_HINT if name in FOREIGN_METHOD_KEYS else did_you_mean(name, ("general", "datasets"))
            _report(problems, name, "unknown top-level key in a dataset config", hint)
    general = _validate_table(tables.get("general", {}), "general",
                              DATASET_LEVEL + SUBSET_LEVEL, "general", problems)
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
    if not any(_is_folder_table(s) for d in datasets if isinstance(d, dict) for s in d.get("subsets") or []):
        for name in FOLDER_KEYS:   # [general] holds defaults for folder subsets, and there are none
            if name in general:
                report_folder_key(problems, f"general.{name}")
    return blueprint


def _merged(name: str, levels: list[dict[str, Any]], default: Any) -> Any:
    """The first level that sets ``name`` (subset, dataset, general), else ``default``."""
    for values in levels:
        if name in values:
            return values[name]
    return default


def _parse_dataset(raw: Any, prefix: str, general: dict[str, Any], problems: ProblemList, base_dir: Path) -> DatasetSpec | None:
    if not isinstance(raw, dict):
        _report(problems, prefix, "must be a table", "write it as [[datasets]]")
        return None
    subsets = raw.get("subsets", [])
    has_folders = isinstance(subsets, list) and any(_is_folder_table(s) for s in subsets)
    allowed = DATASET_LEVEL + _for_method(SUBSET_LEVEL, has_folders)
    values = _validate_table(raw, prefix, allowed, "dataset", problems, skip=("subsets",))
    levels = [values, general]
    spec = DatasetSpec(key=prefix)
    for name in DATASET_LEVEL:
        setattr(spec, name, _merged(name, levels, getattr(spec, name)))
    _check_bucket_limits(spec, prefix, levels, problems)
    _note_resolution(spec, prefix, levels, problems)

    if not isinstance(subsets, list) or not subsets:
        _report(problems, f"{prefix}.subsets", "a dataset needs at least one [[datasets.subsets]] table",
                "add [[datasets.subsets]] with image_dir (images with caption files) or metadata_file")
        return spec
    seen: set[tuple[Path, bool]] = set()
    for si, sraw in enumerate(subsets):
        sub = _parse_subset(sraw, f"{prefix}.subsets[{si}]", levels, problems, base_dir)
        if sub is None:
            continue
        if sub.num_repeats < 1:
            _report(problems, f"{sub.key}.num_repeats", f"num_repeats = {sub.num_repeats} < 1: subset skipped",
                    "use num_repeats = 1 or more to train on it", "warning")
            continue
        source = (sub.source.resolve(), sub.is_reg)
        if source in seen:
            what = "image folder" if sub.is_folder else "metadata file"
            key = "image_dir" if sub.is_folder else "metadata_file"
            _report(problems, f"{sub.key}.{key}", f"{sub.source} is already used by another subset of this dataset "
                    f"(the same {what}): subset skipped", "raise num_repeats of the first subset instead", "warning")
            continue
        seen.add(source)
        spec.subsets.append(sub)
    return spec


def _is_folder_table(raw: Any) -> bool:
    """A subset table without metadata_file reads its folder (kohya's DreamBooth method)."""
    return isinstance(raw, dict) and "metadata_file" not in raw


def _for_method(names: tuple[str, ...], folder: bool) -> tuple[str, ...]:
    """The keys a table may hold: one that reads only metadata files takes no folder keys."""
    return names if folder else tuple(k for k in names if k not in FOLDER_KEYS)


def _check_bucket_limits(spec: DatasetSpec, prefix: str, levels: list[dict[str, Any]], problems: ProblemList) -> None:
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


def _note_resolution(spec: DatasetSpec, prefix: str, levels: list[dict[str, Any]], problems: ProblemList) -> None:
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



def _parse_subset(raw: Any, prefix: str, levels: list[dict[str, Any]], problems: ProblemList, base_dir: Path) -> SubsetSpec | None:
    if not isinstance(raw, dict):
        _report(problems, prefix, "must be a table", "write it as [[datasets.subsets]]")
        return None
    folder = _is_folder_table(raw)
    values = _validate_table(raw, prefix, _for_method(SUBSET_LEVEL + SUBSET_ONLY, folder), "subset", problems)
    ok = True
    if folder and "image_dir" not in raw:
        _report(problems, f"{prefix}.image_dir", "a subset needs image_dir (a folder of images with caption files) "
                "or metadata_file (a kohya metadata JSON)", "add image_dir, or build a metadata file with "
                "`sdft prepare` and add metadata_file")
        ok = False
    metadata_file = _existing_file(values, prefix, base_dir, problems) if not folder else None
    ok = ok and (folder or metadata_file is not None)
    image_dir = None
    if "image_dir" in values:
        image_dir = _resolve_path(values["image_dir"], base_dir)
        if not image_dir.is_dir():
            _report(problems, f"{prefix}.image_dir", f"image folder not found: {image_dir}",
                    "check the path (relative paths start at the TOML's folder)")
            ok = False
    mask_dir, mask_ok = _mask_folder(values, prefix, base_dir, problems)
    if not (ok and mask_ok) or (folder and image_dir is None):
        return None
    levels = [values, *levels]
    sub = SubsetSpec(metadata_file=metadata_file, image_dir=image_dir, conditioning_data_dir=mask_dir, key=prefix)
    for name in SUBSET_LEVEL:
        setattr(sub, name, _merged(name, levels, getattr(sub, name)))
    for name in ("alpha_mask", "is_val", "is_reg"):
        setattr(sub, name, bool(values.get(name, False)))
    if sub.is_val and sub.is_reg:
        _report(problems, f"{prefix}.is_reg", "is_val and is_reg both given: a subset either is held out for the "
                "validation loss or trains as regularization images", "keep one of them")
        return None
    if sub.face_crop_aug_range is not None:
        _report(problems, f"{prefix}.face_crop_aug_range",
                "face_crop_aug_range is ignored (needs face info in file names and no bucketing)", "", "warning")
    return sub


def _existing_file(values: dict[str, Any], prefix: str, base_dir: Path, problems: ProblemList) -> Path | None:
    """The subset's metadata file, when it exists and may be read (else its problem is reported)."""
    if "metadata_file" not in values:
        return None   # a wrong type, reported by the table's check
    metadata_file = _resolve_path(values["metadata_file"], base_dir)
    if not metadata_file.exists():
        _report(problems, f"{prefix}.metadata_file", f"metadata file not found: {values['metadata_file']}",
                did_you_mean_file(metadata_file) or "check the path (relative paths start at the TOML's folder); "
                + _build_metadata_command(values, base_dir, metadata_file))
        return None
    if refused := file_problem(metadata_file, "metadata file"):
        _report(problems, f"{prefix}.metadata_file", *refused)
        return None
    return metadata_file


def _build_metadata_command(values: dict[str, Any], base_dir: Path, metadata_file: Path) -> str:
    """How to make the missing metadata file: the exact command when the subset names its images."""
    from shlex import quote

    if not isinstance(values.get("image_dir"), (str, Path)):
        return f"build one with `sdft prepare IMAGE_FOLDER --out {quote(str(metadata_file))}`"
    images = _resolve_path(str(values["image_dir"]), base_dir)
    return f"build it with `sdft prepare {quote(str(images))} --out {quote(str(metadata_file))}`"


def _mask_folder(values: dict[str, Any], prefix: str, base_dir: Path, problems: ProblemList) -> tuple[Path | None, bool]:
    """(the subset's mask folder or None, whether its mask settings are usable)."""
    if "conditioning_data_dir" not in values:
        return None, True
    mask_dir = _resolve_path(values["conditioning_data_dir"], base_dir)
    if not mask_dir.is_dir():
        _report(problems, f"{prefix}.conditioning_data_dir", f"mask folder not found: {mask_dir}",
                "a folder with one mask image per image, named like the image (relative paths start at "
                "the TOML's folder)")
        return None, False
    if values.get("alpha_mask"):
        _report(problems, f"{prefix}.alpha_mask", "alpha_mask and conditioning_data_dir both give the mask",
                "keep one: the alpha channel or the mask folder")
        return None, False
    return mask_dir, True


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
                problems.items.append(Problem(FILE_KEY, f"not valid JSON: {exc.msg}", "fix the syntax",
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

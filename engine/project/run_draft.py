"""The run file being written: dotted values over a comment-preserving TOML document.

Values are run-TOML dotted keys (``optimizer.learning_rate``). The kohya dataset keys a draft
edits (batch size, resolution, bucket limits) are ``dataset.*`` and go to the first
``[[datasets]]`` table; the subset's ``num_repeats`` is ``subset.num_repeats``. A draft opened
from a file keeps that file's document, so its comments and unknown layout survive; only the
values that changed are written into it (docs/run-file.md).
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit

from engine.config import schema
from engine.data.sidecar_kind import SIDECAR_EXTENSIONS
from engine.project.wizard_options import OPTION_KEYS

if TYPE_CHECKING:
    from dataclasses import Field

    from tomlkit.items import AoT

    from engine.config.dataset_specs import DatasetBlueprint, SubsetSpec
    from engine.config.problems import Problem
    from engine.data.buckets import BucketSettings

# Where a new draft starts: the schema's defaults, except a better first run (bucketing on).
DATASET_DEFAULTS: dict[str, Any] = {
    "dataset.batch_size": 1,
    "dataset.resolution": 512,
    "dataset.enable_bucket": True,
    "dataset.bucket_no_upscale": False,
    "dataset.min_bucket_reso": 256,
    "dataset.max_bucket_reso": 1024,
    "dataset.bucket_reso_steps": 64,
    "subset.num_repeats": 1,
}
BUCKET_KEYS = ("enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")

DRAFT_OVERRIDES: dict[str, Any] = {"memory.gradient_checkpointing": True}

# What a `.txt` sidecar holds (engine/data/sidecar_kind.py guesses it from the files): the run's
# data.caption_extension and data.tags_extension for each reading.
SIDECAR_KEYS = ("data.caption_extension", "data.tags_extension")
SIDECAR_MODES = {mode: dict(zip(SIDECAR_KEYS, extensions, strict=True)) for mode, extensions in SIDECAR_EXTENSIONS.items()}


def _schema_position(dotted: str) -> tuple[int, int]:
    """Where a key stands in the schema (its table's place, then its own): a new file lists
    the keys in the order docs/run-file.md documents them, whatever order the wizard asks."""
    section, name = dotted.split(".", 1)
    tables = list(schema.SECTIONS)
    names = [f.name for f in fields(schema.SECTIONS[section])]
    return tables.index(section), names.index(name)


# The run keys a draft edits (the wizard's Options step, the sidecar choice) and always carries.
DRAFT_KEYS = tuple(sorted(OPTION_KEYS + SIDECAR_KEYS, key=_schema_position))

# Written to a new file even at their defaults, so the file shows the choices that matter.
ALWAYS_WRITTEN = {
    "model.pretrained_model_name_or_path", "train.output_dir", "train.output_name", "train.max_train_steps",
    "optimizer.type", "optimizer.learning_rate", "optimizer.lr_scheduler", "memory.mixed_precision",
    "memory.gradient_checkpointing", "memory.attention", "cache.latents", "train.mode",
}


DATASET_SECTIONS = ("dataset", "subset", "general")


def _field(dotted: str) -> Field[Any]:
    section, name = dotted.split(".", 1)
    if section in DATASET_SECTIONS:
        from engine.config.dataset_keys import FILE_KEYS

        return FILE_KEYS[name][0]
    for f in fields(schema.SECTIONS[section]):
        if f.name == name:
            return f
    raise KeyError(dotted)


def schema_default(dotted: str) -> Any:
    """The schema's default for ``section.name``."""
    f = _field(dotted)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(f"{dotted} has no default")


def field_meta(dotted: str) -> dict[str, Any]:
    """The declared metadata (doc, choices, min, max) of a dotted run or dataset key; {} if unknown."""
    try:
        return dict(_field(dotted).metadata)
    except KeyError:
        return {}


def field_type(dotted: str) -> Any:
    """The declared type of a dotted run key (``int | None`` for ``train.max_train_epochs``)."""
    section, name = dotted.split(".", 1)
    return typing.get_type_hints(schema.SECTIONS[section])[name]


def value_problem(dotted: str, value: Any) -> str | None:
    """What ``--check`` says about ``dotted = value`` on its own (type, bounds, choices, the key's
    meaning), or None when it fits: the wizard asks before it takes a typed value."""
    section, name = canonical_key(dotted).split(".", 1)
    if section in DATASET_SECTIONS:
        from engine.config.dataset_keys import key_problem

        return key_problem(name, value, section)
    from engine.config.fields import check_value

    _kept, problem = check_value(_field(dotted), field_type(dotted), value)
    return problem[0] if problem else None


def default_values() -> dict[str, Any]:
    return {**{key: schema_default(key) for key in DRAFT_KEYS}, **DRAFT_OVERRIDES, **DATASET_DEFAULTS}


def canonical_key(key: str) -> str:
    """kohya's ``general.*`` dataset keys are the draft's ``dataset.*``."""
    return "dataset." + key.split(".", 1)[1] if key.startswith("general.") else key


@dataclass(frozen=True)
class DatasetLink:
    """Where the run's first subset reads its images and labels (paths as the draft sees them).
    A first dataset of folder subsets gives them all instead: their specs and the tables a new run
    file writes for them (image_dir as a path)."""

    metadata_file: Path | None
    image_dir: Path | None
    folder_subsets: tuple[dict[str, Any], ...] = ()
    subsets: tuple[SubsetSpec, ...] = ()


def folder_subset_table(sub: SubsetSpec) -> dict[str, Any]:
    """The table that describes a folder subset (engine.config.dataset's SubsetSpec) in a run file."""
    table: dict[str, Any] = {"image_dir": sub.image_dir, "num_repeats": sub.num_repeats}
    for name in ("caption_extension", "class_tokens"):
        if getattr(sub, name):
            table[name] = getattr(sub, name)
    if sub.is_reg:
        table["is_reg"] = True
    return table


@dataclass(frozen=True)
class DatasetTables:
    """What a draft takes from a dataset table: its values and the first subset's link and
    caption rules (how training joins and decorates the caption, engine.data.captions)."""

    values: dict[str, Any]
    link: DatasetLink
    caption_rules: dict[str, Any]


def dataset_tables(blueprint: DatasetBlueprint | None, caption_tags_join: str | None = None) -> DatasetTables | None:
    """The first dataset and subset of a resolved blueprint (engine.config.dataset)."""
    if blueprint is None or not blueprint.datasets:
        return None
    ds = blueprint.datasets[0]
    values: dict[str, Any] = {"dataset.batch_size": ds.batch_size}
    if ds.resolution is not None:
        w, h = ds.resolution
        values["dataset.resolution"] = w if w == h else [w, h]
    values.update({f"dataset.{name}": getattr(ds, name) for name in BUCKET_KEYS})
    if not ds.subsets:
        return DatasetTables(values, DatasetLink(None, None), {})
    sub = ds.subsets[0]
    values["subset.num_repeats"] = sub.num_repeats
    rules = {"separator": sub.caption_separator, "wildcard": sub.enable_wildcard,
             "prefix": sub.caption_prefix, "suffix": sub.caption_suffix}
    if caption_tags_join is not None:
        rules["join"] = caption_tags_join
    if all(s.is_folder for s in ds.subsets):
        link = DatasetLink(None, sub.image_dir, tuple(folder_subset_table(s) for s in ds.subsets), tuple(ds.subsets))
        return DatasetTables(values, link, rules)
    image_dir = sub.image_dir or (sub.metadata_file.parent if sub.metadata_file else None)
    return DatasetTables(values, DatasetLink(sub.metadata_file, image_dir), rules)


@dataclass
class RunDraft:
    """The values of a run file being written, and the document it was opened from."""

    values: dict[str, Any] = field(default_factory=default_values)
    path: Path | None = None                 # the file opened or last saved
    document: tomlkit.TOMLDocument | None = None   # its tomlkit document (None: a new file)
    loaded_values: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(canonical_key(key), default)

    def set(self, key: str, value: Any) -> None:
        self.values[canonical_key(key)] = value

    @property
    def resolution(self) -> tuple[int, int]:
        res = self.values.get("dataset.resolution", 512)
        return (int(res[0]), int(res[1])) if isinstance(res, (list, tuple)) else (int(res), int(res))

    @property
    def sidecar_mode(self) -> str:
        """What a ``.txt`` sidecar is read as: "tags", "captions", or "custom" (other extensions)."""
        current = {key: self.values.get(key, schema_default(key)) for key in SIDECAR_KEYS}
        return next((mode for mode, exts in SIDECAR_MODES.items() if exts == current), "custom")

    def bucket_settings(self) -> BucketSettings:
        """The engine's bucket settings for these values (limits rounded as training rounds them)."""
        from engine.config.dataset_specs import round_bucket_limits
        from engine.data.buckets import BucketSettings

        v = self.values
        step = int(v["dataset.bucket_reso_steps"])
        min_b, max_b = round_bucket_limits(int(v["dataset.min_bucket_reso"]), int(v["dataset.max_bucket_reso"]), step)
        enable = bool(v["dataset.enable_bucket"])
        return BucketSettings(resolution=self.resolution, enable_bucket=enable,
                              no_upscale=bool(v["dataset.bucket_no_upscale"]) and enable,
                              min_bucket_reso=min_b, max_bucket_reso=max_b, bucket_reso_steps=step)

    def sections(self) -> schema.RunConfig:
        """The draft's run values as a RunConfig, unvalidated and without datasets (for the
        planner, which needs the values while the user is still typing them)."""
        config = schema.RunConfig()
        for key in DRAFT_KEYS:
            section, name = key.split(".", 1)
            if key in self.values:
                setattr(getattr(config, section), name, self.values[key])
        return config

    # ---------------------------------------------------------------- files

    def open(self, path: Path) -> DatasetTables | None:
        """Fill the draft from a run file (its document is kept so comments survive)."""
        from engine.config.run_toml import load_document, load_run_file

        config, _document, _warnings = load_run_file(path)
        self.path = Path(path)
        self.document = load_document(path)
        for key in DRAFT_KEYS:
            section, name = key.split(".", 1)
            self.values[key] = getattr(getattr(config, section), name)
        tables = dataset_tables(config.datasets, config.data.caption_tags_join)
        if tables is not None:
            self.values.update(tables.values)
        self.loaded_values = dict(self.values)
        return tables

    def render(self, run_path: Path, dataset: DatasetLink) -> str:
        """The run TOML text as it will be written."""
        return tomlkit.dumps(self._document(run_path, dataset))

    def save(self, run_path: Path, dataset: DatasetLink) -> Path:
        """Write the run TOML atomically; the draft now edits that file."""
        from engine.config.run_toml import save_document

        save_document(self._document(run_path, dataset), run_path)
        self.path = run_path
        return run_path

    def validate(self, run_path: Path, dataset: DatasetLink, text: str | None = None) -> list[Problem]:
        """The problems found without torch, at once, for the file as it would be written: the
        schema's (errors and warnings) and keys the rest of the file leaves idle (sampling every
        N steps without a prompt); ``check`` adds the model, the images and the optimizer.
        ``text``: what ``render(run_path, dataset)`` returned, when the caller has it already
        (the wizard shows it and checks it on every change: rendering once is enough)."""
        from engine.config.problems import ConfigError
        from engine.config.run_toml import collect_run_text
        from engine.preflight.inert import check_inert_options

        try:
            if text is None:
                text = self.render(run_path, dataset)
            config, _doc, problems = collect_run_text(text, file=str(run_path),
                                                      base_dir=run_path.parent)
        except ConfigError as exc:   # not TOML at all
            return list(exc.problems)
        check_inert_options(config, problems)
        return list(problems.items)

    def check(self, run_path: Path, dataset: DatasetLink, *, skip_data: bool = False) -> list[Problem]:
        """What ``sdft train --check`` says about the file as it would be written (imports torch);
        an earlier run in its folder is a note, since the wizard asks what to do with it."""
        from engine.preflight.checks import check_run_text

        _config, problems = check_run_text(self.render(run_path, dataset), file=str(run_path),
                                           base_dir=run_path.parent, skip_data=skip_data, restart=None)
        return problems

    def would_replace(self, run_path: Path) -> bool:
        """Saving to ``run_path`` would overwrite a file this draft did not open or write."""
        run_path = Path(run_path).expanduser()
        mine = self.path is not None and Path(self.path).expanduser().resolve() == run_path.resolve()
        return run_path.exists() and not mine

    # ---------------------------------------------------------------- the document

    def _document(self, run_path: Path, dataset: DatasetLink) -> tomlkit.TOMLDocument:
        if self.values.get("train.seed") is None:
            # Drawn once and written: a run started from this file resumes with the same seed.
            from engine.train.seeds import new_seed

            self.values["train.seed"] = new_seed()
        if self.document is not None:
            return self._edited_document(self.document)
        return self._new_document(run_path, dataset)

    def _edited_document(self, document: tomlkit.TOMLDocument) -> tomlkit.TOMLDocument:
        from engine.config.run_toml import set_value

        doc = tomlkit.parse(tomlkit.dumps(document))
        changed = {k: v for k, v in self.values.items() if v != self.loaded_values.get(k)}
        for key in DRAFT_KEYS:
            if key in changed:
                set_value(doc, key, changed[key])
        datasets = doc.get("datasets")
        if datasets:
            table = datasets[0]
            for key, value in changed.items():
                if key.startswith("dataset."):
                    table[key.split(".", 1)[1]] = value
            subsets = table.get("subsets")
            if subsets and "subset.num_repeats" in changed:
                subsets[0]["num_repeats"] = changed["subset.num_repeats"]
        return doc

    def _new_document(self, run_path: Path, dataset: DatasetLink) -> tomlkit.TOMLDocument:
        from engine.config.run_toml import set_value

        doc = tomlkit.document()
        doc.add(tomlkit.comment("sdft run file, written by the wizard. Train with: sdft train " + run_path.name))
        doc.add(tomlkit.comment("Every key is documented in the README; `sdft train --check FILE` validates it."))
        doc.add("config_version", schema.CONFIG_VERSION)
        for key in DRAFT_KEYS:
            value = self.values.get(key)
            if value is None or (value == schema_default(key) and key not in ALWAYS_WRITTEN):
                continue
            set_value(doc, key, value)
        table = tomlkit.table()
        for key, value in self.values.items():
            if key.startswith("dataset."):
                table[key.split(".", 1)[1]] = value
        table["subsets"] = self._subset_tables(run_path, dataset)
        datasets = tomlkit.aot()
        datasets.append(table)
        doc["datasets"] = datasets
        return doc


    def _subset_tables(self, run_path: Path, dataset: DatasetLink) -> AoT:
        """The subsets of a new run file: the folder subsets as they are, or one metadata subset;
        the first takes the draft's num_repeats."""
        subsets = tomlkit.aot()
        for table in dataset.folder_subsets or ({},):
            subset = tomlkit.table()
            if not dataset.folder_subsets:
                subset["metadata_file"] = _relative(dataset.metadata_file, run_path) or "metadata.json"
                if dataset.image_dir is not None:
                    subset["image_dir"] = _relative(dataset.image_dir, run_path)
            for name, value in table.items():
                subset[name] = _relative(value, run_path) if name == "image_dir" else value
            subsets.append(subset)
        subsets[0]["num_repeats"] = self.values["subset.num_repeats"]
        return subsets


def _relative(path: Path | None, run_path: Path) -> str | None:
    """A path as the run file writes it: relative to the file's folder when inside it."""
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(run_path.parent.resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())

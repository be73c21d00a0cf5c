"""The wizard's draft: chosen config values, the dataset index and its bucket plan. No widgets.

Screens read and change a single ``WizardState``; everything here is plain Python on top of the
engine (scan, captions, buckets, metadata, run TOML, planner), so it is tested without a terminal.
Nothing imports torch: token counting imports the tokenizer lazily (transformers, no torch) and is
meant to run in a worker thread.

Values are kept as run-TOML dotted keys (``optimizer.learning_rate``). The kohya dataset keys that
the wizard edits (batch size, resolution, bucket limits) live under ``dataset.*`` and are written to
the first ``[[datasets]]`` table; the subset's ``num_repeats`` is ``subset.num_repeats``.
"""

from __future__ import annotations

import json
import struct
import threading
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import tomlkit

from engine.config import schema

# Token counts and the health check both load the CLIP tokenizer from worker threads; two threads
# importing transformers' lazy modules at once fail with "cannot import name 'CLIPTokenizer'".
TOKENIZER_LOCK = threading.Lock()

# ------------------------------------------------------------------ the values the wizard edits

# (dotted key, default) for the run TOML tables; defaults are the schema's unless the wizard
# has a better starting point for a first run (bucketing on, cached latents). The defaults run on
# any machine (AdamW, full precision); a detected GPU starts from its card's preset instead.
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

# Keys shown on the options screen and always written to a new file.
OPTION_KEYS = (
    "model.pretrained_model_name_or_path", "model.v2", "model.v_parameterization", "model.clip_skip",
    "model.max_token_length",
    "train.mode", "train.output_dir", "train.output_name", "train.max_train_steps", "train.max_train_epochs",
    "train.gradient_accumulation_steps", "train.train_text_encoder", "train.seed",
    "optimizer.type", "optimizer.learning_rate", "optimizer.lr_scheduler", "optimizer.lr_warmup_steps",
    "memory.mixed_precision", "memory.full_bf16", "memory.gradient_checkpointing", "memory.attention",
    "cache.latents",
    "save.format", "save.precision", "save.every_n_epochs",
    "sample.every_n_steps", "sample.prompts",
    "train.ema", "train.ema_cpu_offload",
)

WIZARD_OVERRIDES: dict[str, Any] = {
    "memory.gradient_checkpointing": True,
}


def schema_default(dotted: str) -> Any:
    """The schema's default for ``section.name``."""
    section, name = dotted.split(".", 1)
    for f in fields(schema.SECTIONS[section]):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            return f.default_factory()  # type: ignore[misc]
    raise KeyError(dotted)


def field_meta(dotted: str) -> dict:
    """The schema metadata (doc, choices, min, max) for a dotted section key."""
    section, name = dotted.split(".", 1)
    for f in fields(schema.SECTIONS[section]):
        if f.name == name:
            return dict(f.metadata)
    return {}


def default_values() -> dict[str, Any]:
    values = {key: schema_default(key) for key in OPTION_KEYS}
    values.update(WIZARD_OVERRIDES)
    values.update(DATASET_DEFAULTS)
    return values


# ------------------------------------------------------------------ dataset records


@dataclass
class ImageRecord:
    """One image with its caption sources and what the checks found."""

    path: Path
    size: tuple[int, int] | None
    caption: str | None = None
    tags: str | None = None
    error: str | None = None
    orientation: int = 1
    mode: str = ""
    key: str | None = None          # metadata key when the dataset came from a metadata file
    tokens: int | None = None       # CLIP tokens of the joined caption (filled by count_tokens)

    @property
    def edit_field(self) -> str:
        """Which text the editor changes: the caption, or the tags when there is only a tags file."""
        return "tags" if self.caption is None and self.tags is not None else "caption"

    @property
    def edit_text(self) -> str:
        return getattr(self, self.edit_field) or ""

    def tag_count(self) -> int:
        return len([t for t in (self.tags if self.tags is not None else (self.caption or "")).split(",") if t.strip()])


@dataclass
class Snapshot:
    """One undo step: the text of one field of one image before a write (None = no file)."""

    index: int
    field: str
    old: str | None


# Labels for the engine's health kinds (engine.data.health) and the quick per-record checks.
HEALTH_LABELS = {
    "unreadable": "cannot be read (skipped)", "truncated": "truncated file", "zero_size": "empty file",
    "rejected": "cannot be bucketed", "duplicate": "exact duplicates", "too_small": "smaller than the smallest bucket",
    "heavy_upscale": "enlarged more than 2x (looks soft)", "no_caption": "no caption or tags",
    "too_long": "caption longer than max_token_length", "odd_mode": "pixel format converted",
    "exif_rotated": "EXIF rotation", "not_utf8": "caption file not UTF-8 (read with replacement characters)",
    "name_clash": "images sharing one name (all train, one caption file)",
}

PROBLEM_KINDS = {
    "unreadable": "cannot be read (skipped by training)",
    "no_caption": "no caption or tags file",
    "empty_caption": "empty caption",
    "too_long": "caption longer than max_token_length (truncated)",
    "small": "smaller than the minimum bucket (will be upscaled)",
    "rotated": "EXIF rotation (honoured; kohya ignores it)",
    "converted": "unusual pixel format (converted to 8-bit RGB)",
}


@dataclass
class LabelModels:
    """The captioner and tagger the captions step runs (ctrl+l); None = the engine's default.

    SDFT_CAPTION_MODEL / SDFT_TAG_MODEL preset them (a folder or a hub id).
    """

    caption_model: str | None = None
    tag_model: str | None = None
    tagger: str = "wd14"                # "wd14" | "deepdanbooru"

    @classmethod
    def from_env(cls) -> "LabelModels":
        import os

        return cls(os.environ.get("SDFT_CAPTION_MODEL") or None, os.environ.get("SDFT_TAG_MODEL") or None)


@dataclass
class ModelGuess:
    """What a model file/folder looks like, read without torch (headers and config JSON only)."""

    family: str | None = None       # "sd1" | "sd2" | None (unknown)
    v_parameterization: bool | None = None
    note: str = ""
    small: bool = False             # text width other than 768/1024: a tiny test model (the demo)

    def label(self) -> str:
        if self.family is None:
            return self.note or "not detected"
        name = {"sd1": "SD 1.x", "sd2": "SD 2.x"}[self.family]
        pred = {True: ", v-prediction", False: ", epsilon", None: ""}[self.v_parameterization]
        return name + pred + (f" ({self.note})" if self.note else "")


def probe_model(source: str) -> ModelGuess:
    """Detect SD1/SD2 and v-prediction from a diffusers folder's configs or a .safetensors header.

    The full detection runs when the engine loads the model; this is the quick look
    the options screen shows (and uses to pick SD2 numbers for the VRAM estimate).
    """
    if not source:
        return ModelGuess(note="no model chosen")
    path = Path(source).expanduser()
    if path.is_dir():
        unet_cfg = path / "unet" / "config.json"
        try:
            cfg = json.loads(unet_cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ModelGuess(note=f"{path} has no readable unet/config.json")
        family = "sd2" if cfg.get("cross_attention_dim") == 1024 else "sd1"
        pred = None
        try:
            sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
            pred = sched.get("prediction_type") == "v_prediction"
        except (OSError, ValueError):
            pass
        if cfg.get("cross_attention_dim") not in (768, 1024) and cfg.get("cross_attention_dim") is not None:
            return ModelGuess(family, pred, f"cross_attention_dim {cfg.get('cross_attention_dim')}: a small test model",
                              small=True)
        return ModelGuess(family, pred, "diffusers folder")
    if path.suffix.lower() == ".safetensors" and path.is_file():
        try:
            header = _safetensors_header(path)
        except (OSError, ValueError) as exc:
            return ModelGuess(note=f"cannot read the header: {exc}")
        meta = header.pop("__metadata__", {}) or {}
        family = None
        for key, info in header.items():
            if key.endswith("attn2.to_k.weight") and isinstance(info, dict):
                dim = info.get("shape", [0, 0])[-1]
                family = "sd2" if dim == 1024 else "sd1" if dim == 768 else None
                break
        pred_text = str(meta.get("modelspec.prediction_type", "")).lower()
        pred = True if pred_text == "v" else False if pred_text == "epsilon" else None
        note = "single file" + ("" if pred is not None else "; v-prediction decided when loading")
        return ModelGuess(family, pred, note)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth") and path.is_file():
        return ModelGuess(note="pickle checkpoint: detected when loading")
    if not path.exists() and "/" in source and not source.startswith((".", "/", "~")):
        return ModelGuess(note="hub id: detected when loading")
    return ModelGuess(note=f"not found: {source}")


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100_000_000:
            raise ValueError("header too large")
        return json.loads(fh.read(length).decode("utf-8"))


# ------------------------------------------------------------------ the state


def _caption_rules(subset) -> dict:
    """The subset settings that shape its caption text (for :func:`caption_as_trained`)."""
    return {"separator": subset.caption_separator, "wildcard": subset.enable_wildcard,
            "prefix": subset.caption_prefix, "suffix": subset.caption_suffix}


@dataclass
class WizardState:
    """Everything the wizard has chosen so far."""

    values: dict[str, Any] = field(default_factory=default_values)
    run_path: Path | None = None            # the TOML being edited (or to be written)
    document: Any = None                    # tomlkit document of an existing run TOML
    loaded_values: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None              # folder, metadata file or dataset TOML
    image_dir: Path | None = None
    metadata_file: Path | None = None       # existing metadata the dataset came from
    records: list[ImageRecord] = field(default_factory=list)
    scan_error: str | None = None
    undo_stack: list[Snapshot] = field(default_factory=list)
    model_guess: ModelGuess = field(default_factory=ModelGuess)
    hardware: Any = None                    # engine.hardware.HardwareInfo once probed
    health_report: Any = None               # engine.data.health.HealthReport once checked
    preset_applied: int | None = None
    label_models: LabelModels = field(default_factory=LabelModels.from_env)
    user_set: set[str] = field(default_factory=set)  # keys the user typed or picked on a step
    metadata_beside_images: bool = False     # write the metadata JSON into the image folder (asked)
    preset_kept: dict[str, Any] = field(default_factory=dict)  # the last preset's values not applied
    subset_caption_rules: dict[str, Any] = field(default_factory=dict)  # a loaded run's join, prefix, ...

    # ---------------------------------------------------------------- values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if key.startswith("general."):
            key = "dataset." + key.split(".", 1)[1]
        self.values[key] = value

    def apply(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            self.set(key, value)

    @property
    def resolution(self) -> tuple[int, int]:
        res = self.values.get("dataset.resolution", 512)
        if isinstance(res, (list, tuple)):
            return int(res[0]), int(res[1])
        return int(res), int(res)

    @property
    def caption_extension(self) -> str:
        return self.values.get("data.caption_extension", ".caption")

    @property
    def tags_extension(self) -> str:
        return self.values.get("data.tags_extension", ".txt")

    @property
    def sidecar_mode(self) -> str:
        """What a ``.txt`` sidecar is read as: "tags", "captions", or "custom" (other extensions)."""
        current = {key: self.values.get(key, schema_default(key)) for key in SIDECAR_KEYS}
        return next((mode for mode, exts in SIDECAR_MODES.items() if exts == current), "custom")

    def set_sidecar_mode(self, mode: str) -> None:
        """Read ``.txt`` sidecars as tags or as captions: sets the run's data.*_extension keys
        (a folder must be scanned again to read its sidecars the new way)."""
        for key, ext in SIDECAR_MODES[mode].items():
            self.set_by_user(key, ext)

    def set_by_user(self, key: str, value: Any) -> None:
        """A value the user chose on a step: a preset keeps it when the step is an earlier one."""
        self.set(key, value)
        self.user_set.add("dataset." + key.split(".", 1)[1] if key.startswith("general.") else key)

    def kept_from_earlier_step(self, key: str) -> bool:
        """True for a Buckets-step value (batch size, resolution, ...) that the user set there or
        that came from the opened file: a preset chosen on Options must not override it."""
        key = "dataset." + key.split(".", 1)[1] if key.startswith("general.") else key
        if key not in DATASET_DEFAULTS:
            return False
        return key in self.user_set or self.values.get(key) != DATASET_DEFAULTS[key]

    # ---------------------------------------------------------------- loading

    def load_run_toml(self, path: Path) -> None:
        """Fill the draft from an existing run TOML (the document is kept so comments survive)."""
        from engine.config.run_toml import load_document, load_run_file

        config, document, _warnings = load_run_file(path)
        self.run_path = Path(path)
        self.document = load_document(path)
        for key in OPTION_KEYS + SIDECAR_KEYS:
            section, name = key.split(".", 1)
            self.values[key] = getattr(getattr(config, section), name)
        blueprint = config.datasets
        if blueprint is not None and blueprint.datasets:
            ds = blueprint.datasets[0]
            self.values["dataset.batch_size"] = ds.batch_size
            if ds.resolution is not None:
                w, h = ds.resolution
                self.values["dataset.resolution"] = w if w == h else [w, h]
            for name in ("enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
                self.values[f"dataset.{name}"] = getattr(ds, name)
            if ds.subsets:
                sub = ds.subsets[0]
                self.values["subset.num_repeats"] = sub.num_repeats
                self.subset_caption_rules = {**_caption_rules(sub), "join": config.data.caption_tags_join}
                self.metadata_file = sub.metadata_file
                self.image_dir = sub.image_dir or sub.metadata_file.parent
        self.loaded_values = dict(self.values)

    def load_source(self, source: str | Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Scan a folder, a kohya metadata JSON/JSONL, a dataset TOML or a run TOML."""
        path = Path(source).expanduser()
        self.scan_error = None
        self.health_report = None
        self.undo_stack.clear()
        try:
            if path.is_dir():
                self.source = path
                self.image_dir = path
                self.metadata_file = None
                self.records = self._scan_folder(path, progress)
            elif path.suffix.lower() in (".json", ".jsonl"):
                self.source = path
                self._load_metadata(path, path.parent, progress)
            elif path.suffix.lower() == ".toml":
                self.source = path
                self._load_toml(path, progress)
            elif not path.exists():
                raise FileNotFoundError(f"not found: {path}")
            else:
                raise ValueError(f"{path.name}: choose a folder of images, a metadata .json/.jsonl or a .toml file")
        except Exception as exc:  # shown on the dataset screen; the user picks another path
            self.records = []
            self.scan_error = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(str(path)) else str(exc)
            if type(exc).__name__ in ("ScanError", "MetadataError", "ConfigError", "FileNotFoundError", "ValueError"):
                self.scan_error = str(exc)

    def _scan_folder(self, folder: Path, progress) -> list[ImageRecord]:
        from engine.data.captions import read_sidecar
        from engine.data.scan import find_images, read_sizes

        paths = find_images(folder, recursive=bool(self.values.get("data.recursive", False)))
        infos = []
        chunk = 64
        for start in range(0, len(paths), chunk):
            infos.extend(read_sizes(paths[start:start + chunk]))
            if progress:
                progress(min(len(paths), start + chunk), len(paths))
        if progress and not paths:
            progress(0, 0)
        out = []
        for info in infos:
            stem = info.path.with_suffix("")
            out.append(ImageRecord(
                path=info.path, size=info.size, error=info.error, orientation=info.orientation, mode=info.mode,
                caption=read_sidecar(stem.with_name(stem.name + self.caption_extension)),
                tags=read_sidecar(stem.with_name(stem.name + self.tags_extension)),
            ))
        return out

    def _load_metadata(self, path: Path, image_dir: Path, progress) -> None:
        from engine.data.metadata import read_metadata
        from engine.data.scan import read_sizes

        meta = read_metadata(path, image_dir)
        self.metadata_file = path
        self.image_dir = image_dir
        need = [e.path for e in meta.entries if e.image_size is None]
        infos = {i.path: i for i in read_sizes(need)} if need else {}
        records = []
        for n, e in enumerate(meta.entries):
            info = infos.get(e.path)
            size = tuple(e.image_size) if e.image_size else (info.size if info else None)
            records.append(ImageRecord(path=e.path, size=size, caption=e.caption, tags=e.tags, key=e.key,
                                       error=info.error if info else None))
            if progress and n % 64 == 0:
                progress(n, len(meta.entries))
        if progress:
            progress(len(records), len(records))
        self.records = records

    def _load_toml(self, path: Path, progress) -> None:
        text = path.read_text(encoding="utf-8-sig")
        data = tomlkit.parse(text).unwrap()
        if any(key in data for key in schema.SECTIONS) or "dataset_config" in data:
            self.load_run_toml(path)
        else:
            from engine.config.dataset import load_dataset_file
            from engine.config.problems import ProblemList

            problems = ProblemList(file=str(path))
            blueprint = load_dataset_file(path, problems)
            problems.raise_if_errors()
            if not blueprint.subsets:
                raise ValueError(f"{path}: no usable [[datasets.subsets]]")
            ds = blueprint.datasets[0]
            self.values["dataset.batch_size"] = ds.batch_size
            if ds.resolution:
                self.values["dataset.resolution"] = ds.resolution[0] if ds.resolution[0] == ds.resolution[1] else list(ds.resolution)
            for name in ("enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
                self.values[f"dataset.{name}"] = getattr(ds, name)
            sub = blueprint.subsets[0]
            self.values["subset.num_repeats"] = sub.num_repeats
            self.subset_caption_rules = _caption_rules(sub)
            self.metadata_file = sub.metadata_file
            self.image_dir = sub.image_dir or sub.metadata_file.parent
        if self.metadata_file is not None:
            self._load_metadata(self.metadata_file, self.image_dir or self.metadata_file.parent, progress)
        elif progress:
            progress(0, 0)

    # ---------------------------------------------------------------- captions

    def joined_caption(self, record: ImageRecord) -> str:
        """The text this image trains with (the engine's join, the subset's prefix and suffix)."""
        from engine.data.captions import caption_as_trained

        return caption_as_trained(record.caption, record.tags, **self.subset_caption_rules)

    def count_tokens(self) -> None:
        """Fill ``tokens`` for every record (imports the tokenizer: call from a worker)."""
        v2 = self.model_guess.family == "sd2" or self.values.get("model.v2") is True
        texts = [self.joined_caption(r) for r in self.records]
        with TOKENIZER_LOCK:
            from engine.models.tokenizer import count_tokens

            counts = count_tokens(texts, v2=v2) if texts else []
        for record, n in zip(self.records, counts):
            record.tokens = n

    def sidecar_path(self, record: ImageRecord, which: str) -> Path:
        ext = self.caption_extension if which == "caption" else self.tags_extension
        stem = record.path.with_suffix("")
        return stem.with_name(stem.name + ext)

    def set_text(self, index: int, text: str, which: str | None = None, *, record_undo: bool = True) -> bool:
        """Write one image's caption (or tags) atomically; True when it changed."""
        record = self.records[index]
        which = which or record.edit_field
        old = getattr(record, which)
        text = text.strip()
        if (old or "") == text and old is not None:
            return False
        self._write(record, which, text)
        if record_undo:
            self.undo_stack.append(Snapshot(index, which, old))
        return True

    def _write(self, record: ImageRecord, which: str, text: str | None) -> None:
        if self.metadata_file is not None and record.key is not None:
            from engine.data.metadata import load_raw, write_metadata_json

            raw, _ = load_raw(self.metadata_file)
            entry = raw.setdefault(record.key, {})
            if text is None:
                entry.pop(which, None)
            else:
                entry[which] = text
            write_metadata_json(self.metadata_file, raw)
        else:
            path = self.sidecar_path(record, which)
            if text is None:
                path.unlink(missing_ok=True)
            else:
                from engine.data.captions import write_caption

                write_caption(path, text, policy="overwrite")
        setattr(record, which, text)
        record.tokens = None

    def undo(self) -> Snapshot | None:
        """Restore the text before the last write (the file is rewritten atomically, or removed)."""
        if not self.undo_stack:
            return None
        snap = self.undo_stack.pop()
        marker = getattr(snap, "batch", None)
        self._write(self.records[snap.index], snap.field, snap.old)
        # A bulk edit pushes one snapshot per file plus a marker: undo all of it at once.
        while self.undo_stack and marker is not None and getattr(self.undo_stack[-1], "batch", None) == marker:
            snap = self.undo_stack.pop()
            self._write(self.records[snap.index], snap.field, snap.old)
        return snap

    def bulk_edit(self, indices: list[int], op: str, a: str, b: str = "") -> int:
        """find/replace, add_tag, remove_tag or prefix over ``indices``; one undo step. Returns files changed."""
        marker = object()
        changed = 0
        for i in indices:
            record = self.records[i]
            # tag edits go to the tags when the image has them (a caption + tags metadata entry);
            # otherwise to the text the editor shows
            which = "tags" if op in ("add_tag", "remove_tag") and record.tags is not None else record.edit_field
            old = getattr(record, which) or ""
            new = transform_text(old, op, a, b)
            if new != old:
                snap_old = getattr(record, which)
                self._write(record, which, new)
                snap = Snapshot(i, which, snap_old)
                snap.batch = marker  # type: ignore[attr-defined]
                self.undo_stack.append(snap)
                changed += 1
        return changed

    # ---------------------------------------------------------------- health

    def run_health_check(self) -> None:
        """The engine's full health check (decodes every image, hashes for duplicates): a worker job."""
        from engine.data.health import check_images

        try:
            settings = self.bucket_settings()
        except Exception:
            settings = None
        v2 = self.model_guess.family == "sd2" or self.values.get("model.v2") is True
        with TOKENIZER_LOCK:
            self.health_report = check_images(
                [r.path for r in self.records], captions=[self.joined_caption(r) for r in self.records],
                settings=settings, max_token_length=int(self.values.get("model.max_token_length", 75)), v2=v2)

    def health(self) -> dict[str, list[tuple[Path, str]]]:
        """Problem kind -> [(file, message)] for the dataset screen.

        The engine's report (engine.data.health) once ``run_health_check`` ran; until then the quick
        per-record checks the captions table also uses.
        """
        report = getattr(self, "health_report", None)
        if report is not None:
            return {kind: [(Path(i.path), i.message) for i in issues] for kind, issues in report.by_kind().items()}
        out: dict[str, list[tuple[Path, str]]] = {k: [] for k in PROBLEM_KINDS}
        max_tokens = int(self.values.get("model.max_token_length", 75))
        min_side = int(self.values.get("dataset.min_bucket_reso", 256))
        for r in self.records:
            for kind in record_problems(r, max_tokens, min_side):
                out[kind].append((r.path, PROBLEM_KINDS[kind]))
        return {k: v for k, v in out.items() if v}

    def problems_of(self, record: ImageRecord) -> list[str]:
        return record_problems(record, int(self.values.get("model.max_token_length", 75)),
                               int(self.values.get("dataset.min_bucket_reso", 256)))

    # ---------------------------------------------------------------- buckets

    def bucket_settings(self):
        from engine.config.dataset import round_bucket_limits
        from engine.data.buckets import BucketSettings

        d = int(self.values["dataset.bucket_reso_steps"])
        min_b, max_b = round_bucket_limits(int(self.values["dataset.min_bucket_reso"]),
                                           int(self.values["dataset.max_bucket_reso"]), d)
        enable = bool(self.values["dataset.enable_bucket"])
        return BucketSettings(resolution=self.resolution, enable_bucket=enable,
                              no_upscale=bool(self.values["dataset.bucket_no_upscale"]) and enable,
                              min_bucket_reso=min_b, max_bucket_reso=max_b, bucket_reso_steps=d)

    def usable_records(self) -> list[ImageRecord]:
        return [r for r in self.records if r.size is not None and r.error is None]

    def no_images_reason(self) -> str | None:
        """Why the later steps have nothing to work on, once a source was chosen: no images in
        it, or none that can be read. None when there are images to train on (or no source yet)."""
        if self.source is None or self.scan_error or self.usable_records():
            return None
        from engine.data.scan import image_extensions

        kinds = " ".join(sorted(image_extensions()))
        if not self.records:
            return (f"No images in {self.source}: sdft reads {kinds} files"
                    f"{'' if self.values.get('data.recursive') else ' (sub-folders only with data.recursive)'}. "
                    "Add images or pick another folder.")
        return f"None of the {len(self.records)} images in {self.source} can be read: see the list below."

    def bucket_report(self):
        """The engine's bucket report for the current settings (raises BucketError on bad limits)."""
        from engine.data.buckets import assign_sizes, bucket_report

        settings = self.bucket_settings()
        if min(settings.resolution) < settings.bucket_reso_steps:
            raise ValueError(f"resolution {settings.resolution[0]}x{settings.resolution[1]} is below the bucket "
                             f"step {settings.bucket_reso_steps}")
        records = self.usable_records()
        assignments = assign_sizes([r.size for r in records], settings)
        repeats = [int(self.values["subset.num_repeats"])] * len(records)
        return bucket_report(assignments, int(self.values["dataset.batch_size"]), repeats), assignments, records

    def largest_bucket(self) -> tuple[int, int]:
        try:
            report, _a, _r = self.bucket_report()
        except Exception:
            return self.resolution
        if not report.rows:
            return self.resolution
        return max((r.bucket for r in report.rows), key=lambda b: b[0] * b[1])

    # ---------------------------------------------------------------- planner

    def plan_options(self):
        from engine.plan import PlanOptions

        family = self.model_guess.family
        if family is None:
            family = "sd2" if self.values.get("model.v2") is True else "sd1"
        w, h = self.largest_bucket()
        v = self.values
        return PlanOptions(
            family=family, width=w, height=h, batch_size=int(v["dataset.batch_size"]),
            gradient_accumulation_steps=int(v.get("train.gradient_accumulation_steps") or 1),
            mixed_precision=v["memory.mixed_precision"], full_half=bool(v.get("memory.full_bf16")),
            gradient_checkpointing=bool(v["memory.gradient_checkpointing"]), attention=v["memory.attention"],
            optimizer=v["optimizer.type"], train_text_encoder=bool(v["train.train_text_encoder"]),
            max_token_length=int(v["model.max_token_length"]), ema=bool(v.get("train.ema")),
            ema_cpu_offload=bool(v.get("train.ema_cpu_offload")), cache_latents=v["cache.latents"],
            mode=v["train.mode"],
        )

    def gpu_budget(self) -> float | None:
        gpu = getattr(self.hardware, "best_gpu", None)
        return float(gpu.total_bytes) if gpu else None

    def capabilities(self):
        """What can run here (engine.hardware): before the probe answers, as if there were no GPU."""
        from engine.hardware import HardwareInfo, capabilities

        return capabilities(self.hardware or HardwareInfo(note="not probed yet"))

    def cannot_run_here(self) -> list[str]:
        """Why chosen values cannot run on this machine, e.g. "AdamW8bit needs the package ..."."""
        caps = self.capabilities()
        return [reason for key, value in self.values.items() if (reason := caps.why_not(key, value))]

    def apply_preset(self, size_gb: int) -> list[str]:
        """Apply the preset as it can run here; returns a note per choice it had to replace."""
        from engine.plan import preset_values

        values, notes = preset_values(size_gb, self.capabilities())
        # a value the user set on Buckets (or the opened file set) stays; the screen says so
        self.preset_kept = {key: value for key, value in values.items() if self.kept_from_earlier_step(key)}
        values = {key: value for key, value in values.items() if key not in self.preset_kept}
        self.apply(values)
        if not values.get("memory.full_bf16"):
            self.values["memory.full_bf16"] = False
        self.preset_applied = size_gb
        return notes

    # ---------------------------------------------------------------- writing

    def model_source(self, text: str) -> str:
        """The base model as the engine will find it: a relative path is relative to the run file
        (RunConfig.resolve), so the demo's ``model`` means ``demo/model`` whatever the cwd is."""
        text = (text or "").strip()
        if text and not Path(text).expanduser().is_absolute():
            candidate = self.default_run_path().parent / text
            if candidate.exists():
                return str(candidate)
        return text

    def default_run_path(self) -> Path:
        if self.run_path is not None:
            return self.run_path
        base = self.image_dir.parent if self.image_dir else Path.cwd()
        return base / f"{self.values.get('train.output_name') or 'sdft-run'}.toml"

    def metadata_target(self, run_path: Path) -> Path:
        """Where the wizard writes the metadata JSON for a folder dataset: beside the run file
        (``<run>-metadata.json``; the run's image_dir resolves its keys), so the user's image folder
        is left as it was; in the image folder only when asked (``metadata_beside_images``)."""
        if self.metadata_beside_images and self.image_dir is not None:
            return self.image_dir / METADATA_NAME
        return run_path.parent / f"{run_path.stem}-metadata.json"

    def render_toml(self, run_path: Path | None = None) -> str:
        """The run TOML text as it will be written."""
        run_path = Path(run_path or self.default_run_path())
        return tomlkit.dumps(self._document(run_path))

    def _rel(self, path: Path | None, run_path: Path) -> str | None:
        if path is None:
            return None
        try:
            return Path(path).resolve().relative_to(run_path.parent.resolve()).as_posix()
        except ValueError:
            return str(Path(path).resolve())

    def _metadata_for_toml(self, run_path: Path) -> Path | None:
        return self.metadata_file if self.metadata_file is not None else (
            self.metadata_target(run_path) if self.image_dir is not None else None)

    def _document(self, run_path: Path):
        from engine.config.run_toml import set_value

        if self.values.get("train.seed") is None:
            # Drawn once and written: a run started from this file resumes with the same seed.
            from engine.train.seeds import new_seed

            self.values["train.seed"] = new_seed()
        if self.document is not None:
            doc = tomlkit.parse(tomlkit.dumps(self.document))
            for key in OPTION_KEYS + SIDECAR_KEYS:
                if key in self.values and self.values.get(key) != self.loaded_values.get(key):
                    set_value(doc, key, self.values.get(key))
            datasets = doc.get("datasets")
            if datasets:
                table = datasets[0]
                for key, value in self.values.items():
                    if key.startswith("dataset.") and value != self.loaded_values.get(key):
                        table[key.split(".", 1)[1]] = value
                subs = table.get("subsets")
                if subs and self.values["subset.num_repeats"] != self.loaded_values.get("subset.num_repeats"):
                    subs[0]["num_repeats"] = self.values["subset.num_repeats"]
            return doc
        doc = tomlkit.document()
        doc.add(tomlkit.comment("sdft run file, written by the wizard. Train with: sdft train " + run_path.name))
        doc.add(tomlkit.comment("Every key is documented in the README; `sdft train --check FILE` validates it."))
        doc.add("config_version", schema.CONFIG_VERSION)
        for key in OPTION_KEYS + SIDECAR_KEYS:
            value = self.values.get(key)
            if value is None or (value == schema_default(key) and key not in _ALWAYS_WRITTEN):
                continue
            set_value(doc, key, value)
        dataset = tomlkit.table()
        for key, value in self.values.items():
            if key.startswith("dataset."):
                dataset[key.split(".", 1)[1]] = value
        subset = tomlkit.table()
        meta = self._metadata_for_toml(run_path)
        subset["metadata_file"] = self._rel(meta, run_path) or "metadata.json"
        if self.image_dir is not None:
            subset["image_dir"] = self._rel(self.image_dir, run_path)
        subset["num_repeats"] = self.values["subset.num_repeats"]
        subsets = tomlkit.aot()
        subsets.append(subset)
        dataset["subsets"] = subsets
        datasets = tomlkit.aot()
        datasets.append(dataset)
        doc["datasets"] = datasets
        return doc

    def save(self, run_path: Path | None = None) -> Path:
        """Write the metadata JSON (folder datasets) and the run TOML, both atomically."""
        from engine.config.run_toml import save_document

        run_path = Path(run_path or self.default_run_path()).expanduser()
        run_path.parent.mkdir(parents=True, exist_ok=True)
        if self.metadata_file is None and self.image_dir is not None:
            from engine.data.metadata import build_metadata, write_metadata_json

            meta = build_metadata(self.image_dir, recursive=bool(self.values.get("data.recursive", False)),
                                  caption_extension=self.caption_extension, tags_extension=self.tags_extension)
            write_metadata_json(self.metadata_target(run_path), meta)
        doc = self._document(run_path)
        save_document(doc, run_path)
        self.run_path = run_path
        return run_path

    def full_check(self, run_path: Path | None = None) -> list:
        """What ``sdft train --check`` says about the TOML as it would be written: the schema,
        then the engine's preflight (model probe, prompts, optimizer and schedule, packages,
        device). Images are checked from the written metadata; before a folder's metadata JSON
        is saved, the dataset step's health check (the engine's own) stands for them. Slow on
        first use (imports torch): call it from a worker."""
        from engine.preflight import check_run_text

        run_path = Path(run_path or self.default_run_path())
        _config, problems = check_run_text(self.render_toml(run_path), file=str(run_path),
                                           base_dir=run_path.parent, skip_data=self._metadata_unsaved())
        return self._without_unsaved_metadata(problems)

    def _metadata_unsaved(self) -> bool:
        """A folder dataset: its metadata JSON is written on save, so until then it is missing."""
        return self.metadata_file is None and self.image_dir is not None

    def _without_unsaved_metadata(self, problems: list) -> list:
        if not self._metadata_unsaved():
            return problems
        return [p for p in problems if not (p.key.endswith("metadata_file") and "not found" in p.message)]

    def free_run_path(self, wanted: Path) -> Path:
        """``wanted`` or the first ``NAME-2.toml``, ``NAME-3.toml``, ... that does not exist."""
        candidate, n = Path(wanted), 2
        while candidate.exists():
            candidate, n = wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}"), n + 1
        return candidate

    def would_replace(self, run_path: Path) -> bool:
        """Saving to ``run_path`` would overwrite a file this session did not open or write."""
        run_path = Path(run_path).expanduser()
        mine = self.run_path is not None and Path(self.run_path).expanduser().resolve() == run_path.resolve()
        return run_path.exists() and not mine

    def validate(self, run_path: Path | None = None) -> list:
        """Problems the engine reports for the TOML as it would be written (errors and warnings)."""
        from engine.config.problems import ConfigError
        from engine.config.run_toml import parse_run_text

        run_path = Path(run_path or self.default_run_path())
        text = self.render_toml(run_path)
        try:
            _config, _doc, warnings = parse_run_text(text, file=str(run_path), base_dir=run_path.parent)
        except ConfigError as exc:
            return self._without_unsaved_metadata(list(exc.problems))
        return list(warnings)


METADATA_NAME = "sdft-metadata.json"

# What a `.txt` sidecar holds: kohya's fine-tune recipe reads `.caption` captions and `.txt` tags;
# DreamBooth-style folders hold captions in `.txt` (tags, if any, then go to `.tags`).
SIDECAR_KEYS = ("data.caption_extension", "data.tags_extension")
SIDECAR_MODES = {
    "tags": {"data.caption_extension": ".caption", "data.tags_extension": ".txt"},
    "captions": {"data.caption_extension": ".txt", "data.tags_extension": ".tags"},
}

_ALWAYS_WRITTEN = {
    "model.pretrained_model_name_or_path", "train.output_dir", "train.output_name", "train.max_train_steps",
    "optimizer.type", "optimizer.learning_rate", "optimizer.lr_scheduler", "memory.mixed_precision",
    "memory.gradient_checkpointing", "memory.attention", "cache.latents", "train.mode",
}


def record_problems(r: ImageRecord, max_tokens: int, min_side: int) -> list[str]:
    """Problem kinds of one image (see PROBLEM_KINDS)."""
    kinds = []
    if r.error or r.size is None:
        return ["unreadable"]
    if r.caption is None and r.tags is None:
        kinds.append("no_caption")
    elif not (r.caption or "").strip() and not (r.tags or "").strip():
        kinds.append("empty_caption")
    if r.tokens is not None and r.tokens > max_tokens:
        kinds.append("too_long")
    if min(r.size) < min_side:
        kinds.append("small")
    if r.orientation not in (0, 1):
        kinds.append("rotated")
    if r.mode and r.mode not in ("RGB", "L"):
        kinds.append("converted")
    return kinds


def transform_text(text: str, op: str, a: str, b: str = "") -> str:
    """One bulk edit on a caption/tag string (comma-separated tags for the tag operations)."""
    if op == "replace":
        return text.replace(a, b) if a else text
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if op == "add_tag":
        new = [t.strip() for t in a.split(",") if t.strip()]
        missing = [t for t in new if t not in tags]
        return ", ".join(tags + missing) if missing else text
    if op == "remove_tag":
        gone = {t.strip() for t in a.split(",") if t.strip()}
        kept = [t for t in tags if t not in gone]
        return ", ".join(kept) if len(kept) != len(tags) else text
    if op == "prefix":
        if not a or text.startswith(a):
            return text
        return a + text
    raise ValueError(f"unknown bulk edit {op!r}: use replace, add_tag, remove_tag or prefix")

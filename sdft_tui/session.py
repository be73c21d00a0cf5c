"""The wizard's session: one project (engine.project) and what the wizard learned on the way.

Screens read and change one ``WizardSession``. The dataset, its labels and the run file are the
engine's models (``DatasetIndex``, ``LabelStore``, ``RunDraft``); the session only ties them
together with the machine's capabilities and the user's choices, so it is tested without a
terminal. Nothing here imports torch (token counts import the tokenizer lazily, in a worker).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.preflight.model import ModelProbe
from engine.project.dataset_index import DatasetIndex
from engine.project.labels import Edit
from engine.project.project import Project
from engine.project.records import PROBLEM_KINDS, ImageRecord, record_problems
from engine.project.run_draft import DATASET_DEFAULTS, SIDECAR_KEYS, SIDECAR_MODES, canonical_key, value_problem
from engine.project.wizard_options import OPTION_KEYS

# Token counts and the health check both count CLIP tokens from worker threads: one at a time, so
# the ~0.2 s build of the tokenizer (engine/models/tokenizer.py) happens once, not twice at once.
TOKENIZER_LOCK = threading.Lock()
_EXPECTED_LOAD_ERRORS = ("ScanError", "MetadataError", "ConfigError", "FileNotFoundError", "ValueError")


def problem_step(key: str) -> str:
    """The wizard step whose field a problem's dotted key names: Options for its keys, Buckets for
    the batch, resolution and bucket keys, Dataset for the sidecars and the dataset tables
    (``datasets[0].subsets[0].metadata_file``); Review for keys only the file holds."""
    key = canonical_key(key)
    if key in OPTION_KEYS:
        return "options"
    if key.startswith("datasets"):
        name = key.rsplit(".", 1)[-1]
        key = next((k for k in (f"dataset.{name}", f"subset.{name}") if k in DATASET_DEFAULTS), key)
    if key in DATASET_DEFAULTS:
        return "buckets"
    if key in SIDECAR_KEYS or key.startswith(("data.", "datasets", "dataset.", "subset.")):
        return "dataset"
    return "review"


@dataclass
class LabelModels:
    """The captioner and tagger the captions step runs (ctrl+l); None = the engine's default.
    SDFT_CAPTION_MODEL / SDFT_TAG_MODEL preset them (a folder or a hub id)."""

    caption_model: str | None = None
    tag_model: str | None = None
    tagger: str = "wd14"                # "wd14" | "deepdanbooru"

    @classmethod
    def from_env(cls) -> "LabelModels":
        return cls(os.environ.get("SDFT_CAPTION_MODEL") or None, os.environ.get("SDFT_TAG_MODEL") or None)


@dataclass
class WizardSession:
    """Everything the wizard has chosen so far."""

    project: Project = field(default_factory=Project)
    scan_error: str | None = None
    model_guess: ModelProbe = field(default_factory=lambda: ModelProbe(kind="no model chosen"))
    hardware: Any = None                    # engine.hardware.HardwareInfo once probed
    gpus: int = 1                           # GPUs to train on (sdft train --gpus): not in the run file
    health_report: Any = None               # engine.data.health.HealthReport once checked
    preset_applied: int | None = None
    preset_family: str | None = None   # the family whose preset was applied
    preset_kept: dict[str, Any] = field(default_factory=dict)  # the last preset's values not applied
    label_models: LabelModels = field(default_factory=LabelModels.from_env)
    user_set: set[str] = field(default_factory=set)  # keys the user typed or picked on a step
    saved_render: str | None = None         # the run file as last opened or saved (unsaved changes differ)
    checked: tuple[str, list] | None = None  # (the run file as checked, the full check's problems)

    # ---------------------------------------------------------------- values

    @property
    def draft(self):
        return self.project.draft

    @property
    def index(self) -> DatasetIndex:
        return self.project.index

    @property
    def labels(self):
        return self.project.labels

    @property
    def values(self) -> dict[str, Any]:
        return self.draft.values

    @property
    def records(self) -> list[ImageRecord]:
        return self.index.records

    def get(self, key: str, default: Any = None) -> Any:
        return self.draft.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.draft.set(key, value)

    def apply(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            self.draft.set(key, value)

    def value_problem(self, key: str, value: Any) -> str | None:
        """What --check would say about ``key = value`` on its own (engine.project.run_draft)."""
        return value_problem(key, value)

    def set_by_user(self, key: str, value: Any) -> None:
        """A value the user chose on a step: a preset keeps it when the step is an earlier one."""
        self.draft.set(key, value)
        self.user_set.add(canonical_key(key))

    def kept_from_earlier_step(self, key: str) -> bool:
        """A Buckets-step value (batch size, resolution, ...) the user set there or the opened file
        set: a preset chosen on Options must not override it."""
        key = canonical_key(key)
        return key in DATASET_DEFAULTS and (key in self.user_set or self.values.get(key) != DATASET_DEFAULTS[key])

    def set_sidecar_mode(self, mode: str) -> None:
        """Read ``.txt`` sidecars as tags or as captions (a folder must be scanned again); the
        choice stands over what the files look like."""
        self.project.sidecars_chosen = True
        for key, ext in SIDECAR_MODES[mode].items():
            self.set_by_user(key, ext)

    # ---------------------------------------------------------------- loading

    def load_source(self, source: str | Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Read a folder, a kohya metadata JSON/JSONL, a dataset TOML or a run TOML."""
        path = Path(source).expanduser()
        self.scan_error = None
        self.health_report = None
        try:
            self.project.open(path, progress)
        except Exception as exc:  # shown on the dataset screen; the user picks another path
            expected = type(exc).__name__ in _EXPECTED_LOAD_ERRORS or str(exc).startswith(str(path))
            self.scan_error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        self.mark_saved()

    def no_images_reason(self) -> str | None:
        """Why the later steps have nothing to work on, once a source was chosen."""
        if self.index.source is None or self.scan_error:
            return None
        return self.index.no_images_reason(recursive=bool(self.get("data.recursive")))

    # ---------------------------------------------------------------- captions

    def joined_caption(self, record: ImageRecord) -> str:
        """The text this image trains with (the engine's join, the subset's prefix and suffix)."""
        return self.project.caption_as_trained(record)

    def count_tokens(self) -> None:
        """Fill ``tokens`` for every record (imports the tokenizer: call from a worker); a caption
        is cut where training cuts it first, so a huge one costs no more than training reads."""
        with TOKENIZER_LOCK:
            counts = self.project.token_counts(self.records, v2=self._v2())
        for record, n in zip(self.records, counts, strict=True):
            record.tokens = n

    def set_text(self, i: int, text: str, which: str | None = None) -> bool:
        return self.labels.set_text(i, text, which)

    def bulk_edit(self, indices: list[int], op: str, a: str, b: str = "") -> int:
        return self.labels.bulk_edit(indices, op, a, b)

    def undo(self) -> list[Edit]:
        return self.labels.undo()

    # ---------------------------------------------------------------- health

    def run_health_check(self) -> None:
        """The engine's full health check (decodes every image, hashes for duplicates): a worker job."""
        from engine.data.health import check_images

        try:
            settings = self.draft.bucket_settings()
        except Exception:
            settings = None
        with TOKENIZER_LOCK:
            self.health_report = check_images(
                [r.path for r in self.records], captions=[self.joined_caption(r) for r in self.records],
                settings=settings, max_token_length=int(self.get("model.max_token_length", 75)), v2=self._v2())

    def health(self) -> dict[str, list[tuple[Path, str]]]:
        """Problem kind -> [(file, message)]: the engine's report once it ran, else the quick checks."""
        if self.health_report is not None:
            return {kind: [(Path(i.path), i.message) for i in issues]
                    for kind, issues in self.health_report.by_kind().items()}
        out: dict[str, list[tuple[Path, str]]] = {}
        for r in self.records:
            for kind in self.problems_of(r):
                out.setdefault(kind, []).append((r.path, PROBLEM_KINDS[kind]))
        return {k: out[k] for k in PROBLEM_KINDS if k in out}

    def problems_of(self, record: ImageRecord) -> list[str]:
        return record_problems(record, int(self.get("model.max_token_length", 75)),
                               int(self.get("dataset.min_bucket_reso", 256)))

    def _v2(self) -> bool:
        return self.model_guess.family == "sd2" or self.get("model.v2") is True

    @property
    def family(self) -> str:
        """The base model's family: what its headers or configs showed (the Options step looks),
        else the run file's guess (model.v2: SD 2.x, anything else SD 1.x)."""
        return self.model_guess.family or ("sd2" if self.get("model.v2") is True else "sd1")

    def token_summary(self) -> str | None:
        """The longest caption's tokens and for which text encoders they count (None before the
        counts). SDXL's two tokenizers are CLIP's BPE over one vocabulary: the same count for
        both (docs/sdxl.md, "Token layouts")."""
        counted = [r.tokens for r in self.records if r.tokens is not None]
        if not counted:
            return None
        limit = int(self.get("model.max_token_length", 75))
        text = f"longest caption {max(counted)} of {limit} tokens"
        if self.family == "sdxl":
            return text + " for both text encoders (CLIP ViT-L and OpenCLIP bigG count alike)"
        return text

    # ---------------------------------------------------------------- buckets and planning

    def bucket_report(self):
        """The engine's bucket report for the current settings (raises BucketError on bad limits)."""
        return self.project.bucket_report()

    def plan_options(self):
        from engine.plan import PlanOptions

        w, h = self.project.largest_bucket()
        return PlanOptions.from_config(self.draft.sections(), width=w, height=h,
                                       batch_size=int(self.get("dataset.batch_size")), family=self.family,
                                       processes=self.gpus)

    def gpu_count(self) -> int:
        """GPUs the probe found (0 before it answers, or without one)."""
        return len(getattr(self.hardware, "gpus", None) or [])

    def capabilities(self):
        """What can run here (engine.hardware): before the probe answers, as if there were no GPU."""
        from engine.hardware import HardwareInfo, capabilities

        return capabilities(self.hardware or HardwareInfo(note="not probed yet"))

    def gpu_budget(self) -> float | None:
        gpu = getattr(self.hardware, "best_gpu", None)
        return float(gpu.total_bytes) if gpu else None

    def cannot_run_here(self) -> list[str]:
        """Why chosen values cannot run on this machine, e.g. "AdamW8bit needs the package ..."."""
        caps = self.capabilities()
        return [reason for key, value in self.values.items() if (reason := caps.why_not(key, value))]

    def apply_preset(self, size_gb: int) -> list[str]:
        """Apply the preset as it can run here; returns a note per choice it had to replace."""
        from engine.plan import preset_values

        values, notes = preset_values(size_gb, self.capabilities(), self.family)
        # a value the user set on Buckets (or the opened file set) stays; the screen says so
        self.preset_kept = {key: value for key, value in values.items() if self.kept_from_earlier_step(key)}
        self.apply({key: value for key, value in values.items() if key not in self.preset_kept})
        self.preset_applied = size_gb
        self.preset_family = self.family
        return notes

    def preset_for_family(self) -> int | None:
        """The family's preset to apply now, when the one applied was another family's (the model
        was detected after it): the size for this GPU, or the nearest to the one chosen."""
        if self.preset_applied is None or self.preset_family == self.family:
            return None
        from engine.plan import preset_for, presets_for

        gpu = self.gpu_budget()
        if gpu:
            return preset_for(gpu, self.family)
        sizes = sorted(presets_for(self.family))
        return next((size for size in reversed(sizes) if size <= self.preset_applied), sizes[0])

    # ---------------------------------------------------------------- the run file

    def render_toml(self, run_path: Path | None = None) -> str:
        return self.project.render(run_path)

    def save(self, run_path: Path | None = None) -> Path:
        saved = self.project.save(run_path)
        self.mark_saved()
        return saved

    def mark_saved(self) -> None:
        """The run file as it is now counts as saved (just opened or written)."""
        try:
            self.saved_render = self.render_toml()
        except Exception:  # noqa: BLE001 - nothing to render yet: nothing to lose either
            self.saved_render = None

    def run_file_unsaved(self) -> bool:
        """Whether the options differ from the run file as last opened or saved."""
        if self.index.source is None:
            return False   # nothing chosen yet
        try:
            return self.render_toml() != self.saved_render
        except Exception:  # noqa: BLE001
            return False

    def validate(self, run_path: Path | None = None, text: str | None = None) -> list:
        """The schema's problems (``text``: ``render_toml(run_path)``'s result, when rendered already)."""
        return self.project.validate(run_path, text)

    def full_check(self, run_path: Path | None = None) -> list:
        """``sdft train --check`` on the file as it would be written (imports torch: a worker's job);
        kept, so each step shows its own problems until the file changes."""
        render = self.render_toml(run_path)
        problems = self.project.check(run_path)
        self.checked = (render, problems)
        return problems

    def step_problems(self, step: str) -> list:
        """The errors and warnings whose key belongs to ``step`` (``problem_step``): the ones found
        at once (the schema, keys left idle) and, while the file is unchanged, the last full check's."""
        try:
            render = self.render_toml()
            problems = self.validate(text=render)
        except Exception:  # noqa: BLE001 - nothing to render yet: nothing to report either
            return []
        if self.checked is not None and self.checked[0] == render:
            problems = problems + self.checked[1]
        if step == "dataset" and not self.records:
            return []   # no folder chosen yet: the step says so; the draft's placeholder paths are no problem
        seen, out = set(), []
        for p in problems:
            if p.severity in ("error", "warning") and problem_step(p.key) == step and (p.key, p.message) not in seen:
                seen.add((p.key, p.message))
                out.append(p)
        return out

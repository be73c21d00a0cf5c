"""A project: one dataset, its labels and the run file that trains on it.

``Project`` ties a :class:`DatasetIndex`, its :class:`LabelStore` and a :class:`RunDraft`
together: where the run file and the dataset's metadata are written, the text each image trains
with, the buckets it falls in, and the run file checked as ``sdft train --check`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from engine.project.dataset_index import DatasetIndex
from engine.project.labels import LabelStore
from engine.project.records import ImageRecord
from engine.project.run_draft import DatasetLink, RunDraft

if TYPE_CHECKING:
    from engine.config.problems import Problem
    from engine.data.buckets import Assignment, BucketReport
    from engine.data.sidecar_kind import SidecarGuess

METADATA_NAME = "sdft-metadata.json"


@dataclass
class Project:
    draft: RunDraft = field(default_factory=RunDraft)
    index: DatasetIndex = field(default_factory=DatasetIndex)
    caption_rules: dict[str, Any] = field(default_factory=dict)   # the subset's join, prefix, ...
    metadata_beside_images: bool = False     # a folder's metadata JSON goes into the image folder
    labels: LabelStore = field(init=False)
    # how the last folder's .txt files read (engine/data/sidecar_kind.py); None: not a folder
    sidecar_guess: SidecarGuess | None = None
    # the reading of .txt files follows the files until the user (or an opened run file) chooses
    sidecars_chosen: bool = False

    def __post_init__(self) -> None:
        self._new_labels()

    # ---------------------------------------------------------------- the dataset

    def open(self, path: Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Read a folder, a metadata file, a dataset TOML or a run TOML (errors propagate; on one,
        the project is left with an empty dataset at ``path``)."""
        from engine.project.sources import open_dataset_source

        self.index = DatasetIndex(source=path)
        self._new_labels()
        self._guess_sidecars(path)
        opened = open_dataset_source(path, self.draft, recursive=bool(self.draft.get("data.recursive", False)),
                                     progress=progress)
        self.index = opened.index
        if opened.caption_rules is not None:
            self.caption_rules = opened.caption_rules
        self._new_labels()

    def _guess_sidecars(self, path: Path) -> None:
        """A plain folder of images: read its .txt files as what they look like (captions or tags),
        unless the reading was chosen (a run file's extensions, the user's choice)."""
        from engine.data.kohya_folders import is_layout
        from engine.data.sidecar_kind import guess_folder
        from engine.project.run_draft import SIDECAR_MODES

        self.sidecar_guess = None
        if not path.is_dir() or is_layout(path):
            return
        self.sidecar_guess = guess_folder(path, recursive=bool(self.draft.get("data.recursive", False)))
        if not self.sidecars_chosen and self.draft.document is None:
            for key, extension in SIDECAR_MODES[self.sidecar_guess.mode].items():
                self.draft.set(key, extension)

    def sidecar_lines(self) -> list[str]:
        """How the .txt sidecars are read and why (the files' look, the user's choice, the run
        file), then what that changes: which file is the caption, which the tags, and how
        training joins them."""
        from engine.data.captions import join_separator
        from engine.data.sidecar_kind import extensions_meaning

        mode = self.draft.sidecar_mode
        caption, tags = self.draft.get("data.caption_extension"), self.draft.get("data.tags_extension")
        if mode == "custom":
            why = "sidecars as the run file says"
        elif self.sidecars_chosen:
            why = f".txt sidecars read as {mode}: your choice"
        elif self.sidecar_guess is not None and self.sidecar_guess.mode == mode and self.draft.document is None:
            why = self.sidecar_guess.reading()
        else:
            why = f".txt sidecars read as {mode}, as the run file says"
        join = join_separator(self.caption_rules.get("join", "separator"), self.caption_rules.get("separator") or ",")
        return [why, extensions_meaning(caption, tags, join)]

    def _new_labels(self) -> None:
        self.labels = LabelStore(self.index, caption_extension=self.draft.get("data.caption_extension", ".caption"),
                                 tags_extension=self.draft.get("data.tags_extension", ".txt"))

    def caption_as_trained(self, record: ImageRecord) -> str:
        """The text this image trains with: the engine's join of caption and tags, with the
        subset's prefix and suffix (the same function training uses)."""
        from engine.data.captions import caption_as_trained

        rules = dict(self.caption_rules)
        if record.caption_file:   # a folder subset's image: its own subset's class tokens
            rules.update(caption_file=True, class_tokens=record.class_tokens)
        return caption_as_trained(record.caption, record.tags, **rules)

    def default_sample_prompt(self) -> str | None:
        """A prompt for preview samples: the first image's text as it trains (caption and tags
        joined), so the previews show the dataset's subject; None when no image has one."""
        for record in self.index.records:
            text = self.caption_as_trained(record).strip()
            if text:
                # one line; " --" would start a prompt option (kohya's --n, --w, ...) in the middle
                return " ".join(text.split()).replace(" --", " -")
        return None

    def sample_prompts_from_text(self, text: str) -> str | list[str] | None:
        """``sample.prompts`` for what was typed in one field: the name of an existing file is a
        prompts file (found as the engine finds it: beside the run file, then as given); any
        other text is one prompt; nothing is none."""
        text = text.strip()
        if not text:
            return None
        path = Path(text).expanduser()
        if (self.default_run_path().parent / path).is_file() or path.is_file():
            return text
        return [text]

    def token_counts(self, records: Iterable[ImageRecord], v2: bool) -> list[int]:
        """Each record's token count as training tokenizes its caption (imports the tokenizer: call
        from a worker). The caption is cut where training cuts it first, so a huge one costs no
        more here than training reads."""
        from engine.data.captions import caption_char_limit
        from engine.models.tokenizer import count_tokens

        limit = caption_char_limit(225)
        texts = [self.caption_as_trained(r)[:limit] for r in records]
        return count_tokens(texts, v2=v2) if texts else []

    def bucket_report(self) -> tuple[BucketReport, list[Assignment], list[ImageRecord]]:
        """The engine's bucket report for the draft's settings (raises on bad limits)."""
        return self.index.bucket_report(self.draft.bucket_settings(), int(self.draft.get("dataset.batch_size")),
                                        int(self.draft.get("subset.num_repeats")))

    def largest_bucket(self) -> tuple[int, int]:
        """The largest bucket in use (where memory peaks); the resolution when unknown."""
        try:
            rows = self.bucket_report()[0].rows
        except Exception:  # bad limits are shown by the buckets step; the estimate uses the resolution
            return self.draft.resolution
        return max((r.bucket for r in rows), key=lambda b: b[0] * b[1]) if rows else self.draft.resolution

    # ---------------------------------------------------------------- the run file

    def default_run_path(self) -> Path:
        if self.draft.path is not None:
            return self.draft.path
        base = self.index.image_dir.parent if self.index.image_dir else Path.cwd()
        return base / f"{self.draft.get('train.output_name') or 'sdft-run'}.toml"

    def model_source(self, text: str) -> str:
        """The base model as the engine finds it: a relative path is relative to the run file
        (RunConfig.resolve), so the demo's ``model`` means ``demo/model`` whatever the cwd is."""
        text = (text or "").strip()
        if text and not Path(text).expanduser().is_absolute():
            candidate = self.default_run_path().parent / text
            if candidate.exists():
                return str(candidate)
        return text

    def metadata_target(self, run_path: Path) -> Path:
        """Where a folder dataset's metadata JSON goes: beside the run file
        (``<run>-metadata.json``; the run's image_dir resolves its keys), so the image folder is left
        as it was; into the image folder only when asked (``metadata_beside_images``)."""
        if self.metadata_beside_images and self.index.image_dir is not None:
            return self.index.image_dir / METADATA_NAME
        return run_path.parent / f"{run_path.stem}-metadata.json"

    @property
    def metadata_unsaved(self) -> bool:
        """A folder dataset: its metadata JSON is written on save, so until then it is missing."""
        return self.index.metadata_file is None and self.index.image_dir is not None and not self.index.folder_subsets

    def render(self, run_path: Path | None = None) -> str:
        run_path = self._path(run_path)
        return self.draft.render(run_path, self._link(run_path))

    def save(self, run_path: Path | None = None) -> Path:
        """Write the metadata JSON (a folder dataset, from memory) and the run TOML, atomically."""
        run_path = self._path(run_path).expanduser()
        run_path.parent.mkdir(parents=True, exist_ok=True)
        if self.metadata_unsaved:
            self.index.write_metadata(self.metadata_target(run_path))
        return self.draft.save(run_path, self._link(run_path))

    def validate(self, run_path: Path | None = None, text: str | None = None) -> list[Problem]:
        """The schema's problems for the TOML as it would be written (``text``: ``render(run_path)``'s
        result, when the caller has it already)."""
        run_path = self._path(run_path)
        return self._without_unsaved_metadata(self.draft.validate(run_path, self._link(run_path), text))

    def check(self, run_path: Path | None = None) -> list[Problem]:
        """``sdft train --check`` on the TOML as it would be written. Before a folder's metadata
        JSON is saved, the images are not checked from it (the health check stands for them).
        Imports torch on first use: call it from a worker."""
        run_path = self._path(run_path)
        problems = self.draft.check(run_path, self._link(run_path), skip_data=self.metadata_unsaved)
        return self._without_unsaved_metadata(problems)

    def _path(self, run_path: Path | None) -> Path:
        return Path(run_path or self.default_run_path())

    def _link(self, run_path: Path) -> DatasetLink:
        if self.index.folder_subsets:   # they train as they are: no metadata file
            return DatasetLink(None, self.index.image_dir, tuple(self.index.folder_subsets))
        meta = self.index.metadata_file
        if meta is None and self.index.image_dir is not None:
            meta = self.metadata_target(run_path)
        return DatasetLink(meta, self.index.image_dir)

    def _without_unsaved_metadata(self, problems: list[Problem]) -> list[Problem]:
        """The metadata file of an unsaved folder dataset is missing, as expected."""
        if not self.metadata_unsaved:
            return problems
        return [p for p in problems if not (p.key.endswith("metadata_file") and "not found" in p.message)]


def free_run_path(wanted: Path) -> Path:
    """``wanted`` or the first ``NAME-2.toml``, ``NAME-3.toml``, ... that does not exist."""
    candidate, n = Path(wanted), 2
    while candidate.exists():
        candidate, n = wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}"), n + 1
    return candidate

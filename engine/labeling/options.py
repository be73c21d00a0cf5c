"""Options and results of a labelling run (plain dataclasses, no heavy imports).

The CLI builds these from its flags and the wizard from its form; both then call
:func:`engine.labeling.runner.caption_images` / :func:`tag_images`. Defaults are kohya's except the
write policy: sdft never overwrites an existing sidecar unasked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.registry.labelers import TAGGERS, default_model  # noqa: F401 - TAGGERS: the runner reads it here

DEFAULT_BLIP = default_model("blip")
DEFAULT_WD14 = default_model("wd14")
POLICIES = ("skip", "overwrite", "append")


@dataclass
class OutputOptions:
    """Where labels go and what happens to labels already there.

    ``policy``: skip (keep existing text; such images are not even run), overwrite, or
    append (captions: old + separator + new; tags: merged without duplicates).
    ``metadata_file``: also (or, with ``sidecars=False``, only) write the kohya metadata
    JSON; keys of existing entries are kept, new ones are relative to ``image_dir``.
    """

    policy: str = "skip"
    sidecars: bool = True
    metadata_file: Path | None = None
    image_dir: Path | None = None      # root for new metadata keys (default: each image's folder)
    clean: bool = False                # kohya-style cleanup before writing


@dataclass
class RunOptions:
    """Shared by every model: batching and device."""

    batch_size: int = 1
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    exif_transpose: bool = True
    prefetch_batches: int = 2          # batches decoded ahead of inference


@dataclass
class CaptionOptions(RunOptions, OutputOptions):
    """BLIP captioning; kohya's defaults."""

    model: str = DEFAULT_BLIP
    beam_search: bool = False
    num_beams: int = 1
    top_p: float = 0.9
    max_length: int = 75
    min_length: int = 5
    seed: int | None = 42
    caption_extension: str = ".caption"
    prefix: str = ""
    suffix: str = ""
    separator: str = ", "              # used by the append policy


@dataclass
class TagOptions(RunOptions, OutputOptions):
    """WD14 or DeepDanbooru tagging."""

    tagger: str = "wd14"
    model: str | None = None           # None = DEFAULT_WD14 (DeepDanbooru needs a folder)
    thresh: float | None = None        # None = 0.35 for WD14, 0.5 for DeepDanbooru
    general_threshold: float | None = None
    character_threshold: float | None = None
    use_rating_tags: bool = False
    use_rating_tags_as_last_tag: bool = False
    character_tags_first: bool = False
    always_first_tags: list[str] = field(default_factory=list)
    undesired_tags: list[str] = field(default_factory=list)
    tag_replacement: str = ""          # "a,b;c,d" with \, and \; escapes
    remove_underscore: bool = False
    character_tag_expand: bool = False
    max_tags: int | None = None        # keep the most probable general/character tags
    caption_separator: str = ", "
    tags_extension: str = ".txt"

    @property
    def model_source(self) -> str | None:
        return self.model if self.model else (DEFAULT_WD14 if self.tagger == "wd14" else None)


@dataclass(frozen=True)
class LabelProgress:
    """One progress report: after each batch (and once when the model is loaded)."""

    done: int                 # images labelled and written (or found unchanged)
    total: int                # images that need the model (skipped ones excluded)
    skipped: int
    failed: int
    images_per_s: float
    last_path: str = ""
    last_text: str = ""
    phase: str = "labelling"  # "loading" | "labelling"


@dataclass
class LabelSummary:
    """What a run did. ``failed`` holds (path, reason) for unreadable images."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    written: list[str] = field(default_factory=list)       # files changed
    texts: dict[str, str] = field(default_factory=dict)    # image path -> produced text
    seconds: float = 0.0
    images_per_s: float = 0.0
    device: str = "cpu"
    first_batch_s: float | None = None
    stopped: bool = False
    warnings: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)       # folders holding the labels replaced

    @property
    def tags_per_image(self) -> float:
        counts = [len([t for t in text.split(",") if t.strip()]) for text in self.texts.values()]
        return sum(counts) / len(counts) if counts else 0.0

    def tag_frequency(self) -> dict[str, int]:
        from engine.data.captions import tag_frequency

        return tag_frequency(self.texts.values())

    def to_dict(self) -> dict:
        return {
            "done": self.done, "skipped": self.skipped,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "written": self.written, "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3), "device": self.device,
            "first_batch_s": None if self.first_batch_s is None else round(self.first_batch_s, 3),
            "stopped": self.stopped, "tags_per_image": round(self.tags_per_image, 2),
            "warnings": self.warnings, "backups": self.backups,
        }


class LabelError(Exception):
    """A labelling run that cannot start (bad model folder, offline hub id, bad option).

    The message names the file or id and says how to fix it.
    """

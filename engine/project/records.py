"""One image of a dataset as the wizard and the quick checks see it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ImageRecord:
    """One image with its caption sources and what the quick checks found."""

    path: Path
    size: tuple[int, int] | None
    caption: str | None = None
    tags: str | None = None
    error: str | None = None
    orientation: int = 1
    mode: str = ""
    key: str | None = None          # metadata key when the dataset came from a metadata file
    tokens: int | None = None       # CLIP tokens of the text as trained (filled by a token count)
    # a folder subset's image: ``caption`` is the text of its caption file (this extension), and
    # class_tokens what it trains with when that file is missing or empty
    caption_extension: str | None = None
    class_tokens: str | None = None

    @property
    def caption_file(self) -> bool:
        """A folder subset's image (kohya's DreamBooth method): see caption_extension."""
        return self.caption_extension is not None

    @property
    def usable(self) -> bool:
        return self.size is not None and self.error is None

    @property
    def edit_field(self) -> str:
        """Which text the editor changes: the caption, or the tags when there is only a tags file."""
        return "tags" if self.caption is None and self.tags is not None else "caption"

    @property
    def edit_text(self) -> str:
        return getattr(self, self.edit_field) or ""

    def tag_count(self) -> int:
        text = self.tags if self.tags is not None else (self.caption or "")
        return len([t for t in text.split(",") if t.strip()])


# The quick per-record findings (no image decoding); the full check is engine.data.health.
PROBLEM_KINDS = {
    "unreadable": "cannot be read (skipped by training)",
    "no_caption": "no caption or tags file",
    "empty_caption": "empty caption",
    "too_long": "caption longer than max_token_length (truncated)",
    "small": "smaller than the minimum bucket (will be upscaled)",
    "rotated": "EXIF rotation (honoured; kohya ignores it)",
    "converted": "unusual pixel format (converted to 8-bit RGB)",
}


def record_problems(r: ImageRecord, max_tokens: int, min_side: int) -> list[str]:
    """Problem kinds of one image (see PROBLEM_KINDS)."""
    if r.error or r.size is None:
        return ["unreadable"]
    kinds = []
    if r.caption is None and r.tags is None and not r.class_tokens:
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

"""Captions and tags of a dataset's images, stored where the dataset keeps them, with undo.

Two places hold labels (docs/formats.md, captions): sidecar files beside the images
(``foo.caption``, ``foo.txt``) or the entries of the kohya metadata file the dataset came from.
Every write goes through :class:`LabelStore`, atomically, and is kept in an edit log; one user
action (a save, a bulk edit, a labelling run) is one group that :meth:`LabelStore.undo` reverts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from engine.project.dataset_index import DatasetIndex
from engine.project.records import ImageRecord

FIELDS = ("caption", "tags")


@dataclass(frozen=True)
class Edit:
    """One field of one image changed from ``old`` to ``new`` (None = no text, no file)."""

    index: int
    field: str
    old: str | None
    new: str | None


class LabellingDestination(TypedDict):
    """Where an engine labelling run writes (keyword arguments of engine.labeling's options)."""

    sidecars: bool
    image_dir: Path | None
    metadata_file: Path | None


class LabelStore:
    """Reads and writes the labels of ``index.records``; keeps the edit log."""

    def __init__(self, index: DatasetIndex, *, caption_extension: str, tags_extension: str):
        self.index = index
        self.extensions = {"caption": caption_extension, "tags": tags_extension}
        self.log: list[list[Edit]] = []     # applied groups, oldest first; undo pops the last

    # ---------------------------------------------------------------- where labels live

    def in_metadata(self, record: ImageRecord) -> bool:
        return self.index.metadata_file is not None and record.key is not None

    def sidecar_path(self, record: ImageRecord, which: str) -> Path:
        """Where ``which`` text of ``record`` lives; a folder subset's caption, in its own caption file."""
        if which == "caption" and record.caption_extension is not None:   # record.caption_file
            from engine.data.subset_source import caption_file_path

            return caption_file_path(record.path, record.caption_extension)
        stem = record.path.with_suffix("")
        return stem.with_name(stem.name + self.extensions[which])

    def where(self, record: ImageRecord, which: str) -> str:
        """Where the text is written, for the editor's status line."""
        return "metadata" if self.in_metadata(record) else self.sidecar_path(record, which).name

    def labelling_destination(self) -> LabellingDestination:
        """How an engine labelling run writes for this dataset (engine.labeling options)."""
        in_metadata = self.index.metadata_file is not None and any(r.key is not None for r in self.index.records)
        return LabellingDestination(sidecars=not in_metadata, image_dir=self.index.image_dir,
                                    metadata_file=self.index.metadata_file if in_metadata else None)

    # ---------------------------------------------------------------- edits

    def set_text(self, i: int, text: str, which: str | None = None) -> bool:
        """Write one image's caption (or tags); one undo step. True when it changed."""
        record = self.index.records[i]
        which = which or record.edit_field
        old = getattr(record, which)
        text = text.strip()
        if old is not None and old == text:
            return False
        self._apply([Edit(i, which, old, text)])
        return True

    def bulk_edit(self, indices: list[int], op: str, a: str, b: str = "") -> int:
        """find/replace, add_tag, remove_tag or prefix over ``indices``; one undo step.
        Returns how many images changed."""
        edits = []
        for i in indices:
            record = self.index.records[i]
            # tag edits go to the tags when the image has them (a caption + tags entry);
            # otherwise to the text the editor shows
            which = "tags" if op in ("add_tag", "remove_tag") and record.tags is not None else record.edit_field
            old = getattr(record, which)
            new = transform_text(old or "", op, a, b)
            if new != (old or ""):
                edits.append(Edit(i, which, old, new))
        if edits:
            self._apply(edits)
        return len(edits)

    def undo(self) -> list[Edit]:
        """Revert the last group (files rewritten atomically, or removed); [] when none is left."""
        if not self.log:
            return []
        group = self.log.pop()
        self._write([Edit(e.index, e.field, e.new, e.old) for e in reversed(group)])
        return group

    @property
    def can_undo(self) -> bool:
        return bool(self.log)

    # ---------------------------------------------------------------- labelling runs

    def snapshot(self, indices: list[int], which: str) -> dict[int, str | None]:
        """The texts before an engine labelling run writes ``which`` of these images."""
        return {i: getattr(self.index.records[i], which) for i in indices}

    def reload_after(self, before: dict[int, str | None], which: str) -> int:
        """Read back what a labelling run wrote and log it as one undo step; returns the changes."""
        records = [self.index.records[i] for i in before]
        metadata_file = self.index.metadata_file
        if metadata_file is not None and any(self.in_metadata(r) for r in records):
            from engine.data.metadata import load_raw

            raw, _ = load_raw(metadata_file)
            for r in records:
                value = raw.get(r.key, {}).get(which) if r.key is not None else None
                setattr(r, which, value.strip() if isinstance(value, str) else None)
        else:
            from engine.data.captions import read_sidecar

            for r in records:
                setattr(r, which, read_sidecar(self.sidecar_path(r, which)))
        group = []
        for i, old in before.items():
            record = self.index.records[i]
            record.tokens = None
            if getattr(record, which) != old:
                group.append(Edit(i, which, old, getattr(record, which)))
        if group:
            self.log.append(group)
        return len(group)

    # ---------------------------------------------------------------- writing

    def _apply(self, edits: list[Edit]) -> None:
        self._write(edits)
        self.log.append(edits)

    def _write(self, edits: list[Edit]) -> None:
        """Write ``new`` of each edit: the metadata file once for all its entries, sidecars each."""
        records = self.index.records
        in_meta = [e for e in edits if self.in_metadata(records[e.index])]
        metadata_file = self.index.metadata_file
        if in_meta and metadata_file is not None:
            from engine.data.metadata import load_raw, write_metadata_json

            raw, _ = load_raw(metadata_file)
            for e in in_meta:
                key = records[e.index].key
                assert key is not None, "in_metadata: the record has its metadata key"
                entry = raw.setdefault(key, {})
                if e.new is None:
                    entry.pop(e.field, None)
                else:
                    entry[e.field] = e.new
            write_metadata_json(metadata_file, raw)
        for e in edits:
            if e not in in_meta:
                self._write_sidecar(records[e.index], e.field, e.new)
        for e in edits:
            setattr(records[e.index], e.field, e.new)
            records[e.index].tokens = None

    def _write_sidecar(self, record: ImageRecord, which: str, text: str | None) -> None:
        path = self.sidecar_path(record, which)
        if text is None:
            path.unlink(missing_ok=True)
        else:
            from engine.data.captions import write_caption

            write_caption(path, text, policy="overwrite")


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

"""Write labels through the dataset layer: sidecars and/or the kohya metadata JSON.

Policies: ``skip`` keeps existing text (and such images are not sent to the model),
``overwrite`` replaces it, ``append`` adds to it (captions via
engine.data.captions.write_caption; tags merged without duplicates,
``append_tags``). Sidecar writes are atomic per file; the metadata JSON is written
atomically once per run (and on stop), keeping every other entry and key as it was.
A label that ``overwrite`` replaces is copied first (engine.data.label_backups), so it can be
put back after the run.
"""

from __future__ import annotations

from pathlib import Path

from engine.data.captions import clean_caption, clean_tags, read_sidecar, write_caption
from engine.data.label_backups import LabelBackup
from engine.labeling.options import POLICIES, LabelError
from engine.labeling.tagrules import merge_tags


def sidecar_path(image: Path, extension: str) -> Path:
    return image.with_name(image.stem + extension)


def clean_text(text: str, field: str, separator: str) -> str:
    """kohya-style cleaning of one produced text (tags re-joined with their separator)."""
    if field == "caption":
        return clean_caption(text)
    sep = separator.strip() or ","
    parts = [t.strip() for t in text.split(sep) if t.strip()]
    cleaned = clean_tags(", ".join(parts))
    return separator.join(t.strip() for t in cleaned.split(",") if t.strip())


def combine(old: str | None, new: str, field: str, policy: str, separator: str) -> str | None:
    """The text to store, or None to leave the target as it is."""
    if not old:
        return new
    if policy == "skip":
        return None
    if policy == "overwrite":
        return new if new != old else None
    if field == "tags":
        merged = merge_tags(old, new, separator)
        return merged if merged != old else None
    if not new or old.endswith(new):
        return None
    return old + separator + new


class MetadataTarget:
    """One metadata JSON being updated: existing entries kept, keys resolved to images."""

    def __init__(self, path: Path, image_dir: Path | None):
        from engine.data.metadata import _FolderIndex, load_raw, resolve_key
        from engine.data.scan import image_extensions

        self.path = Path(path)
        self.image_dir = Path(image_dir) if image_dir else None
        self.entries: dict[str, dict] = {}
        self.keys: dict[Path, str] = {}
        self.changed = False
        if self.path.exists():
            try:
                self.entries, _warnings = load_raw(self.path)
            except Exception as exc:  # noqa: BLE001 - MetadataError or decode errors
                raise LabelError(f"cannot update {self.path}: {exc}") from None
            index = _FolderIndex(image_extensions())
            for key in self.entries:
                resolved, _problem = resolve_key(key, self.image_dir, index, Path.cwd())
                if resolved is not None:
                    self.keys[resolved.resolve()] = key

    def key_for(self, image: Path) -> str:
        found = self.keys.get(image.resolve())
        if found is not None:
            return found
        root = self.image_dir or image.parent
        try:
            key = image.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            key = str(image.resolve())
        self.keys[image.resolve()] = key
        return key

    def current(self, image: Path, field: str) -> str | None:
        value = self.entries.get(self.key_for(image), {}).get(field)
        return value.strip() if isinstance(value, str) else None

    def store(self, image: Path, field: str, text: str) -> None:
        key = self.key_for(image)
        is_new = key not in self.entries
        entry = self.entries.setdefault(key, {})
        if is_new:          # new entries get image_size like `sdft prepare`; old ones stay as they were
            from engine.data.scan import read_image_info

            info = read_image_info(image)
            if info.size is not None:
                entry["image_size"] = [info.size[0], info.size[1]]
        entry[field] = text
        self.changed = True

    def save(self) -> Path | None:
        from engine.data.metadata import write_metadata_json

        if not self.changed:
            return None
        write_metadata_json(self.path, self.entries, overwrite=True)
        self.changed = False
        return self.path


class LabelWriter:
    """Decides what needs labelling and writes results, for one field ("caption" or "tags")."""

    def __init__(self, field: str, extension: str, *, policy: str = "skip", sidecars: bool = True,
                 metadata_file: Path | None = None, image_dir: Path | None = None, clean: bool = False,
                 separator: str = ", "):
        if policy not in POLICIES:
            raise LabelError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        if not sidecars and metadata_file is None:
            raise LabelError("nothing to write: enable sidecars or give a metadata file")
        if sidecars and not extension.startswith("."):
            raise LabelError(f"extension {extension!r} must start with a dot, e.g. .caption or .txt")
        self.field, self.extension, self.policy = field, extension, policy
        self.sidecars, self.clean, self.separator = sidecars, clean, separator
        self.metadata = MetadataTarget(metadata_file, image_dir) if metadata_file is not None else None
        # overwrite keeps what it replaces: <image_dir>/sdft-label-backups/<date_time>/
        self.backup = LabelBackup(image_dir, f"an overwrite of the {field}") if policy == "overwrite" else None
        self._metadata_replaced = False

    @property
    def backup_folder(self) -> Path | None:
        """Where the replaced labels were copied (None when nothing was replaced)."""
        return self.backup.folder if self.backup is not None else None

    def existing(self, image: Path) -> list[str | None]:
        out = []
        if self.sidecars:
            out.append(read_sidecar(sidecar_path(image, self.extension)))
        if self.metadata is not None:
            out.append(self.metadata.current(image, self.field))
        return out

    def needs(self, image: Path) -> bool:
        """False when every target already has text and the policy is skip."""
        return self.policy != "skip" or not all(self.existing(image))

    def write(self, image: Path, text: str) -> tuple[str, list[str]]:
        """Store ``text`` for ``image``; returns (final text, files changed)."""
        text = text.strip()
        if self.clean:
            text = clean_text(text, self.field, self.separator)
        changed: list[str] = []
        final = text
        if self.sidecars:
            target = sidecar_path(image, self.extension)
            old = read_sidecar(target, strict=self.policy == "append")
            if self.field == "tags" and self.policy == "append" and old:
                merged = combine(old, text, "tags", "append", self.separator)
                if merged is not None and write_caption(target, merged, policy="overwrite"):
                    changed.append(str(target))
                final = merged or old
            else:
                if self.backup is not None and (old or "") not in ("", text):
                    self.backup.keep(target)
                if write_caption(target, text, policy=self.policy, separator=self.separator):
                    changed.append(str(target))
                final = read_sidecar(target) or text
        if self.metadata is not None:
            old = self.metadata.current(image, self.field)
            value = combine(old, text, self.field, self.policy, self.separator)
            if value is not None:
                self._metadata_replaced = self._metadata_replaced or bool(old)
                self.metadata.store(image, self.field, value)
                final = value if not self.sidecars else final
        return final, changed

    def finish(self) -> list[str]:
        if self.metadata is None:
            return []
        if self.backup is not None and self._metadata_replaced and self.metadata.changed:
            self.backup.keep(self.metadata.path)   # the file as it was before this run
        saved = self.metadata.save()
        return [str(saved)] if saved else []

"""kohya's fine-tuning metadata (JSON object or JSONL), read with every key form.

Read: each image key resolves, first hit wins, as (1) an absolute path, (2) a path relative to
``image_dir`` then to the current folder, (3) a stem: ``image_dir/<key><ext>`` over the known
extensions. Every unresolved or ambiguous key is reported at once. Write: ``key_style``
relative (default), stem or absolute; UTF-8, indent 2, sorted keys, atomic. No torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine import atomic
from engine.data.scan import clash_index, find_images, image_extensions, lies_within, read_sizes

KEY_STYLES = ("relative", "stem", "absolute")


class MetadataError(Exception):
    """A metadata file that cannot be used; ``problems`` lists every bad key."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"{path}: " + "\n  ".join(["problems in the metadata file:", *shown]))


@dataclass
class MetaEntry:
    """One image of a metadata file, with its key resolved to a file."""

    key: str
    path: Path
    caption: str | None = None
    tags: str | None = None
    image_size: tuple[int, int] | None = None
    train_resolution: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)     # unknown entry keys, kept for round trips


@dataclass
class MetadataFile:
    path: Path
    entries: list[MetaEntry]
    warnings: list[str] = field(default_factory=list)


_DUPES = "\0duplicates"   # marker key, never a real JSON key (JSON text cannot produce it unescaped)


def _pairs_keep_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """json object hook that remembers duplicate keys (last wins, as json does).

    It runs for every object, entries included; :func:`load_raw` removes the marker from
    both levels so it never reaches ``MetaEntry.extra`` (and a rewritten file).
    """
    out: dict = {}
    dupes = []
    for key, value in pairs:
        if key in out:
            dupes.append(key)
        out[key] = value
    if dupes:
        out[_DUPES] = dupes
    return out


def load_raw(path: str | Path) -> tuple[dict[str, dict], list[str]]:
    """key → entry dict, in file order, plus warnings. JSON object or JSONL by suffix/content."""
    from engine.user_files import FileRefused, read_text

    path = Path(path)
    try:
        text = read_text(path, "metadata file")
    except FileRefused as exc:
        raise MetadataError(path, [f"the file {exc.reason} ({exc.hint})"]) from None
    warnings: list[str] = []
    if path.suffix.lower() == ".jsonl":
        raw: dict[str, dict] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MetadataError(path, [f"line {number}: not valid JSON ({exc.msg})"]) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("image_path"), str):
                raise MetadataError(path, [f"line {number}: each line needs an object with \"image_path\""])
            key = obj.pop("image_path")
            obj.setdefault("caption", "")
            if key in raw:
                warnings.append(f"duplicate key {key!r} (line {number}): the last one wins")
                del raw[key]
            raw[key] = obj
        return raw, warnings
    try:
        data = json.loads(text, object_pairs_hook=_pairs_keep_duplicates)
    except json.JSONDecodeError as exc:
        raise MetadataError(path, [f"line {exc.lineno}: not valid JSON ({exc.msg})"]) from None
    if not isinstance(data, dict):
        raise MetadataError(path, ["the file must hold one JSON object mapping image keys to entries"])
    for key in data.pop(_DUPES, []):
        warnings.append(f"duplicate key {key!r}: the last one wins")
    bad = [k for k, v in data.items() if not isinstance(v, dict)]
    if bad:
        raise MetadataError(path, [f"entry {k!r} must be an object" for k in bad])
    for key, entry in data.items():
        for name in entry.pop(_DUPES, []):
            warnings.append(f"entry {key!r} repeats the field {name!r}: the last one wins")
    return data, warnings


class _FolderIndex:
    """Lazy per-folder listing: stem → image files, for stem keys (one listdir per folder)."""

    def __init__(self, extensions: Iterable[str]):
        self.exts = sorted({e.lower() for e in extensions})
        self.folders: dict[Path, dict[str, list[Path]]] = {}

    def candidates(self, stem_path: Path) -> list[Path]:
        folder = stem_path.parent
        if folder not in self.folders:
            listing: dict[str, list[Path]] = {}
            try:
                with os.scandir(folder) as entries:
                    for e in entries:
                        dot = e.name.rfind(".")
                        if dot > 0 and e.name[dot:].lower() in self.exts:
                            listing.setdefault(e.name[:dot], []).append(folder / e.name)
            except OSError:
                pass
            self.folders[folder] = listing
        files = self.folders[folder].get(stem_path.name, [])
        return sorted(files, key=lambda p: (self.exts.index(p.suffix.lower()), p.name))


def resolve_images(key: str, image_dir: Path | None, index: _FolderIndex,
                   cwd: Path) -> tuple[list[Path], str | None]:
    """(paths, None) or ([], problem) for one key: absolute, relative to ``image_dir`` (then to
    the current folder), or a stem looked up over the image extensions.

    A stem key names several images only when they share that name (``foo.jpg`` beside
    ``foo.png``, see :class:`engine.data.scan.NameClash`): then all of them are returned.
    """
    p = Path(key)
    if p.is_absolute():
        return ([p], None) if p.is_file() else ([], f"{key!r}: file not found")
    if image_dir is None:
        return [], f"{key!r} is not an absolute path and the subset has no image_dir"
    first = image_dir / p
    if first.is_file():
        return [first], None
    second = cwd / p
    if second.is_file():
        return [second], None
    matches = index.candidates(image_dir / p)
    if matches:
        return matches, None
    return [], f"{key!r}: no such image in {image_dir}"


def resolve_key(key: str, image_dir: Path | None, index: _FolderIndex, cwd: Path) -> tuple[Path | None, str | None]:
    """(path, None) or (None, problem) for a key that must name exactly one image."""
    paths, problem = resolve_images(key, image_dir, index, cwd)
    if problem:
        return None, problem
    if len(paths) > 1:
        return None, f"{key!r} matches several images: " + ", ".join(m.name for m in paths)
    return paths[0], None


def _pair(value: Any) -> tuple[int, int] | None:
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return (int(value[0]), int(value[1]))
    return None


def read_metadata(path: str | Path, image_dir: str | Path | None = None, *, cwd: str | Path | None = None) -> MetadataFile:
    """Parse and resolve a metadata file; raises MetadataError listing every bad key at once."""
    path = Path(path)
    raw, warnings = load_raw(path)
    image_dir = Path(image_dir) if image_dir is not None else None
    index = _FolderIndex(image_extensions())
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    entries: list[MetaEntry] = []
    shared: set[int] = set()          # ids of entries split from a stem key naming images that share a name
    problems: list[str] = []
    known = {"caption", "tags", "image_size", "train_resolution"}
    for key, obj in raw.items():
        resolved, problem = resolve_images(key, image_dir, index, cwd)
        if problem:
            problems.append(problem)
            continue
        caption = obj.get("caption")
        tags = obj.get("tags")
        entry = MetaEntry(
            key=key,
            path=resolved[0],
            caption=caption if isinstance(caption, str) else None,
            tags=tags if isinstance(tags, str) else None,
            image_size=_pair(obj.get("image_size")),
            train_resolution=_pair(obj.get("train_resolution")),
            extra={k: v for k, v in obj.items() if k not in known},
        )
        if len(resolved) > 1:
            split = _split_shared_entry(entry, resolved, image_dir, warnings)
            shared.update(id(e) for e in split)
            entries.extend(split)
            continue
        if "image_size" in obj and entry.image_size is None:
            warnings.append(f"{key!r}: image_size {obj['image_size']!r} is not [W, H]; read from the file instead")
        entries.append(entry)
    named = {e.path for e in entries if id(e) not in shared}
    entries = [e for e in entries if id(e) not in shared or e.path not in named]   # an own key wins
    if problems:
        raise MetadataError(path, problems)
    seen: dict[Path, str] = {}
    for e in entries:
        if e.path in seen:
            warnings.append(f"{e.key!r} and {seen[e.path]!r} name the same image")
        seen[e.path] = e.key
    outside = [e.key for e in entries if image_dir is not None and not lies_within(e.path, image_dir)]
    if outside:
        shown = ", ".join(repr(k) for k in outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        warnings.append(f"{len(outside)} key(s) name images outside {image_dir}: {shown}; they train (kohya's "
                        "--full_path writes absolute keys), so check each is meant")
    return MetadataFile(path, entries, warnings)


def _split_shared_entry(entry: MetaEntry, images: list[Path], image_dir: Path,
                        warnings: list[str]) -> list[MetaEntry]:
    """One entry per image of a stem key that names several (``foo`` → foo.jpg, foo.png).

    Each keeps the entry's caption and tags under its own key (with the extension, so keys stay
    unique); a recorded size is dropped because it describes only one of them.
    """
    keys = [make_key(image, image_dir, "relative") for image in images]
    dropped = " (their sizes are read from the files)" if entry.image_size or entry.train_resolution else ""
    warnings.append(f"{entry.key!r} names {len(images)} images that share one name: "
                    f"{', '.join(p.name for p in images)}; each trains with this entry's caption and tags, "
                    f"as {', '.join(repr(k) for k in keys)}{dropped}")
    return [MetaEntry(key=key, path=image, caption=entry.caption, tags=entry.tags, extra=dict(entry.extra))
            for key, image in zip(keys, images, strict=True)]


# ---------------------------------------------------------------- writing


def make_key(image: Path, image_dir: Path, key_style: str, *, shares_name: bool = False) -> str:
    """The metadata key of ``image``. An image that shares its name with another (``foo.jpg``
    beside ``foo.png``) keeps its extension even in the stem style, so the two keys differ."""
    if key_style == "absolute":
        return str(image.resolve())
    rel = image.resolve().relative_to(image_dir.resolve())
    if key_style == "stem" and not shares_name:
        return rel.with_suffix("").as_posix()
    return rel.as_posix()


def build_metadata(image_dir: str | Path, *, recursive: bool = False, caption_extension: str = ".caption",
                   tags_extension: str = ".txt", key_style: str = "relative", exif_transpose: bool = True,
                   train_resolution: dict[Path, tuple[int, int]] | None = None, clean: bool = False,
                   existing: dict[str, dict] | None = None, leave_out: Iterable[Path] = (),
                   not_read: list[tuple[Path, str]] | None = None) -> dict[str, dict]:
    """A folder of images + sidecars → kohya metadata dict (what ``sdft prepare`` writes).

    Entries get ``caption`` / ``tags`` when a sidecar exists, and always ``image_size``
    (the size training sees, EXIF orientation applied). Unreadable images are left out.
    Images that share a name (``foo.jpg``, ``foo.png``) each get an entry from the same
    sidecars, keyed with their extension.
    ``existing`` entries (same key) are kept and updated, so hand edits survive.
    ``leave_out``: images to omit although their header reads (a health check could not decode them).
    Images and sidecars that are links leading outside ``image_dir``, and sidecars that are not
    regular files of a caption's size, are not read; ``not_read`` lists them (path, why).
    """
    from engine.data.captions import clean_caption, clean_tags, read_sidecar

    if key_style not in KEY_STYLES:
        raise ValueError(f"key_style must be one of {', '.join(KEY_STYLES)}, got {key_style!r}")
    image_dir = Path(image_dir)
    left_out = {Path(p).resolve() for p in leave_out}
    outside: list[Path] = []
    paths = [p for p in find_images(image_dir, recursive=recursive, outside=outside) if p.resolve() not in left_out]
    if not_read is not None:
        not_read.extend((p, f"a link to {os.path.realpath(p)}, outside {image_dir}") for p in outside)
    if key_style == "stem" and recursive and any(p.parent != image_dir for p in paths):
        raise ValueError('key_style "stem" needs a flat folder (kohya resolves stems in image_dir only); '
                         'use "relative"')
    infos = read_sizes(paths, exif_transpose=exif_transpose)
    clashing = clash_index(paths)
    out: dict[str, dict] = {}
    for info in infos:
        if info.size is None:
            continue
        key = make_key(info.path, image_dir, key_style, shares_name=info.path in clashing)
        entry = dict((existing or {}).get(key, {}))
        if not entry and info.path in clashing and key_style == "stem":
            # an older file may hold the shared stem key: its hand edits carry over to each image
            entry = {k: v for k, v in (existing or {}).get(make_key(info.path, image_dir, "stem"), {}).items()
                     if k not in ("image_size", "train_resolution")}
        stem = info.path.with_suffix("")
        sidecar = {"within": image_dir, "not_read": not_read}
        caption = read_sidecar(stem.with_name(stem.name + caption_extension), **sidecar) if caption_extension else None
        tags = read_sidecar(stem.with_name(stem.name + tags_extension), **sidecar) if tags_extension else None
        if caption is not None:
            entry["caption"] = clean_caption(caption) if clean else caption
        if tags is not None:
            entry["tags"] = clean_tags(tags) if clean else tags
        entry["image_size"] = [info.size[0], info.size[1]]
        if train_resolution and info.path in train_resolution:
            entry["train_resolution"] = list(train_resolution[info.path])
        out[key] = entry
    return out


def write_metadata_json(path: str | Path, metadata: dict[str, dict], *, overwrite: bool = True) -> Path:
    """UTF-8, indent 2, sorted keys, atomic. ``.jsonl`` writes one object per line."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --force) to replace it")
    if path.suffix.lower() == ".jsonl":
        lines = [json.dumps({"image_path": k, **metadata[k]}, ensure_ascii=False, sort_keys=True)
                 for k in sorted(metadata)]
        atomic.write_text(path, "\n".join(lines) + "\n")
    else:
        atomic.write_text(path, json.dumps(metadata, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    return path

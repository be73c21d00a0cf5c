"""Where a subset's images and captions come from: its metadata file, or its folder.

A folder subset (``image_dir`` without ``metadata_file``) is read as kohya's DreamBooth method
reads it (library/train_util.py, ``DreamBoothDataset``): the images in the folder, each with the
first line of its caption file (``<stem><caption_extension>``; every non-empty line with
``enable_wildcard``), else the subset's ``class_tokens``, else an empty caption. Images whose
caption file is missing or empty are named in the warnings. The layout and its keys:
docs/formats.md, "Folder datasets". No torch.
"""

from __future__ import annotations

from pathlib import Path

from engine.data.metadata import MetadataFile, MetaEntry, read_metadata

SHOWN = 5   # missing captions named in a warning before "and N more"


def read_subset(sub, *, caption_extension: str = ".caption", recursive: bool = False) -> MetadataFile:
    """The subset's entries: its metadata file read (MetadataError on a bad one), or its folder.
    ``caption_extension`` is the run's ``[data]`` one, which a folder subset's own key overrides;
    ``recursive`` (``data.recursive``) also reads a folder subset's sub-folders."""
    if sub.metadata_file is not None:
        return read_metadata(sub.metadata_file, sub.image_dir)
    return read_folder(sub.image_dir, sub.caption_extension or caption_extension, class_tokens=sub.class_tokens,
                       wildcard=sub.enable_wildcard, recursive=recursive)


def read_folder(folder: Path, caption_extension: str, *, class_tokens: str | None = None, wildcard: bool = False,
                recursive: bool = False) -> MetadataFile:
    """A folder subset's images with the captions kohya's DreamBooth method gives them."""
    from engine.data.scan import find_images

    folder = Path(folder)
    outside: list[Path] = []
    entries, missing, unread = [], [], []
    for image in find_images(folder, recursive=recursive, outside=outside):
        caption = folder_caption(image, caption_extension, wildcard=wildcard, within=folder, not_read=unread)
        if caption is None:
            missing.append(image)
            caption = class_tokens or ""
        entries.append(MetaEntry(key=image.relative_to(folder).as_posix(), path=image, caption=caption))
    warnings = [f"{p.name}: not read, {why}" for p, why in unread]
    warnings += [f"{p.name}: a link to a file outside {folder}, not read" for p in outside]
    if missing:
        names = ", ".join(p.name for p in missing[:SHOWN]) + (f" and {len(missing) - SHOWN} more"
                                                             if len(missing) > SHOWN else "")
        instead = f'class_tokens "{class_tokens}"' if class_tokens else "an empty caption"
        warnings.append(f"{len(missing)} image(s) without a caption file ({caption_extension}, or an empty one) "
                        f"train with {instead}: {names}")
    return MetadataFile(folder, entries, warnings)


def folder_caption(image: Path, caption_extension: str, *, wildcard: bool = False, within: Path | None = None,
                   not_read: list | None = None) -> str | None:
    """The caption kohya reads for ``image``: its caption file's first line (every non-empty line
    joined by newlines with ``wildcard``), or None when it has none or an empty one. Like kohya, a
    face-crop name ``name_x_y_w_h.png`` also finds ``name<ext>``."""
    from engine.data.captions import caption_file_text

    text = caption_file(image, caption_extension, within=within, not_read=not_read)
    return caption_file_text(text, wildcard=wildcard)


def caption_file(image: Path, caption_extension: str, *, within: Path | None = None,
                 not_read: list | None = None) -> str | None:
    """The text of ``image``'s caption file (None: it has none), found as kohya finds it."""
    from engine.data.captions import read_sidecar

    for path in _caption_files(image, caption_extension):
        text = read_sidecar(path, within=within, not_read=not_read)
        if text is not None:
            return text
    return None


def caption_file_path(image: Path, caption_extension: str) -> Path:
    """The caption file an edit of ``image``'s caption writes: the one kohya reads, else its own."""
    candidates = _caption_files(image, caption_extension)
    return next((path for path in candidates if path.is_file()), candidates[0])


def _caption_files(image: Path, caption_extension: str) -> list[Path]:
    """``name<ext>``, then for a face-crop name ``name_x_y_w_h.png`` also ``name<ext>`` (kohya)."""
    stem = image.with_suffix("")
    parts = stem.name.split("_")
    names = [stem.name] + (["_".join(parts[:-4])] if len(parts) >= 5 else [])
    return [stem.with_name(name + caption_extension) for name in names]

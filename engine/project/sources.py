"""Opening what a user points at: a folder of images, a kohya metadata file, a dataset TOML or
a run TOML. Each gives a dataset index; the TOML files also give dataset values for the draft."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.project.dataset_index import DatasetIndex, Progress
from engine.project.run_draft import RunDraft, dataset_tables

METADATA_SUFFIXES = (".json", ".jsonl")
# the files open_dataset_source opens (besides a folder): the wizard's file picker shows these
OPENABLE_SUFFIXES = (*METADATA_SUFFIXES, ".toml")


@dataclass(frozen=True)
class OpenedSource:
    index: DatasetIndex
    caption_rules: dict[str, Any] | None = None   # None: keep the draft's (a folder or metadata)


def open_dataset_source(path: Path, draft: RunDraft, *, recursive: bool = False,
                        progress: Callable[[int, int], None] | None = None) -> OpenedSource:
    """Read ``path``; a dataset or run TOML also fills ``draft`` (a run TOML opens in it)."""
    from engine.data.kohya_folders import is_layout

    if path.is_dir() and is_layout(path):
        return _open_layout(path, draft, recursive, progress)
    if path.is_dir():
        index = DatasetIndex.from_folder(path, caption_extension=draft.get("data.caption_extension"),
                                         tags_extension=draft.get("data.tags_extension"),
                                         recursive=recursive, progress=progress)
        return OpenedSource(index)
    suffix = path.suffix.lower()
    if suffix in METADATA_SUFFIXES:
        return OpenedSource(DatasetIndex.from_metadata(path, path.parent, progress=progress))
    if suffix == ".toml":
        return _open_toml(path, draft, progress)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    raise ValueError(f"{path.name}: choose a folder of images, a metadata .json/.jsonl or a .toml file")


def _open_toml(path: Path, draft: RunDraft, progress: Progress | None) -> OpenedSource:
    if is_run_file(path):
        tables = draft.open(path)
    else:
        from engine.config.dataset import load_dataset_file
        from engine.config.problems import ProblemList

        problems = ProblemList(file=str(path))
        blueprint = load_dataset_file(path, problems)
        problems.raise_if_errors()
        tables = dataset_tables(blueprint)
        if tables is None or not blueprint.subsets:
            raise ValueError(f"{path}: no usable [[datasets.subsets]]")
        draft.values.update(tables.values)
    rules = tables.caption_rules if tables is not None else {}
    link = tables.link if tables is not None else None
    if link is not None and link.folder_subsets:
        index = DatasetIndex.from_folder_subsets(link.subsets, link.folder_subsets,
                                                 caption_extension=draft.get("data.caption_extension"),
                                                 recursive=bool(draft.get("data.recursive", False)), source=path,
                                                 progress=progress)
        return OpenedSource(index, rules)
    if link is None or link.metadata_file is None:
        if progress:
            progress(0, 0)
        return OpenedSource(DatasetIndex(source=path, image_dir=link.image_dir if link else None), rules)
    index = DatasetIndex.from_metadata(link.metadata_file, link.image_dir, source=path, progress=progress)
    return OpenedSource(index, rules)


def _open_layout(path: Path, draft: RunDraft, recursive: bool, progress: Progress | None) -> OpenedSource:
    """kohya's DreamBooth folder of ``N_name`` sub-folders, opened as the dataset tables it stands for
    (engine/data/kohya_folders.py), its captions read with the draft's caption extension (the
    subsets take [data] caption_extension, which the run file writes)."""
    from engine.config.dataset import parse_dataset_tables
    from engine.config.problems import ProblemList
    from engine.data.kohya_folders import layout_dataset

    problems = ProblemList(file=str(path))
    blueprint = parse_dataset_tables(layout_dataset(path), problems=problems, base_dir=path)
    problems.raise_if_errors()
    tables = dataset_tables(blueprint)
    assert tables is not None, "a layout is one dataset (engine/data/kohya_folders.py)"
    # the folders say the repeats; the draft's bucket settings stay (no file chose others)
    draft.set("subset.num_repeats", tables.values["subset.num_repeats"])
    index = DatasetIndex.from_folder_subsets(tables.link.subsets, tables.link.folder_subsets,
                                             caption_extension=draft.get("data.caption_extension"),
                                             recursive=recursive, source=path, progress=progress)
    return OpenedSource(index, tables.caption_rules)


def is_run_file(path: Path) -> bool:
    """A run TOML has run sections or ``dataset_config``; a dataset TOML has neither."""
    import tomlkit

    from engine.config import schema

    data = tomlkit.parse(path.read_text(encoding="utf-8-sig")).unwrap()
    return any(key in data for key in schema.SECTIONS) or "dataset_config" in data

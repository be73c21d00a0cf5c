"""kohya's DreamBooth folder layout: a folder of ``N_name`` sub-folders, each a subset.

``train_data_dir/10_sks dog/`` holds images trained 10 times per epoch, captioned by their
caption files or else "sks dog"; the same layout under ``reg_data_dir`` gives regularization
subsets (kohya's library/config_util.py, ``generate_dreambooth_subsets_config_by_subdirs``).
Sub-folders without a number before the first ``_`` are not subsets, as in kohya. Here the
layout becomes the ``[[datasets.subsets]]`` tables that say the same (docs/formats.md, "Folder
datasets"), for ``sdft from-kohya``, ``sdft prepare`` and the wizard. No torch.
"""

from __future__ import annotations

from pathlib import Path


def repeats_and_tokens(name: str) -> tuple[int, str] | None:
    """``"10_sks dog"`` -> (10, "sks dog"); None for a name kohya does not read as a subset."""
    count, _sep, tokens = name.partition("_")
    try:
        repeats = int(count)
    except ValueError:
        return None
    return (repeats, tokens) if repeats >= 1 else None


def layout_subsets(train_dir: Path | None, reg_dir: Path | None = None) -> list[dict]:
    """The subset tables of a layout (sorted by folder name; regularization folders last), with
    paths as given. Sub-folders kohya skips are left out."""
    tables = []
    for base, is_reg in ((train_dir, False), (reg_dir, True)):
        if base is None or not Path(base).is_dir():
            continue
        for folder in sorted(p for p in Path(base).iterdir() if p.is_dir()):
            parsed = repeats_and_tokens(folder.name)
            if parsed is None:
                continue
            table = {"image_dir": str(folder), "num_repeats": parsed[0]}
            if parsed[1]:
                table["class_tokens"] = parsed[1]
            if is_reg:
                table["is_reg"] = True
            tables.append(table)
    return tables


def skipped_folders(base: Path) -> list[str]:
    """Sub-folders of a layout that are not subsets (no ``N_`` before the name)."""
    return sorted(p.name for p in Path(base).iterdir() if p.is_dir() and not p.name.startswith(".")
                  and repeats_and_tokens(p.name) is None)


def is_layout(folder: Path) -> bool:
    """A folder kohya's DreamBooth method reads as a layout: no images of its own, and at least one
    ``N_name`` sub-folder."""
    from engine.data.scan import find_images

    folder = Path(folder)
    if not folder.is_dir() or find_images(folder):
        return False
    return any(p.is_dir() and repeats_and_tokens(p.name) for p in folder.iterdir())


def layout_dataset(train_dir: Path, reg_dir: Path | None = None, **general) -> dict:
    """The dataset tables (``[general]`` with ``general``, one ``[[datasets]]``) of a layout."""
    tables: dict = {"datasets": [{"subsets": layout_subsets(train_dir, reg_dir)}]}
    if general:
        tables = {"general": dict(general), **tables}
    return tables

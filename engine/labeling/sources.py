"""Find a labelling model: a local folder, or a Hugging Face hub id fetched when online.

A folder is checked for the files the model needs, so a wrong folder fails with a list of
what is missing instead of a deep library traceback. A hub id is looked up in the local
hub cache first; only when that misses and the machine is online is it downloaded
(huggingface_hub, imported lazily). Offline, the error names the id and shows how to
download it elsewhere and pass the folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from engine.labeling.options import LabelError
from engine.models.hub import download_advice, is_offline

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def check_folder(folder: Path, required: Sequence[str | tuple[str, ...]], what: str, flag: str = "--model") -> Path:
    """``folder`` when it holds every required file (a tuple = any one of those names)."""
    if not folder.is_dir():
        raise LabelError(f"{folder} is a file, not a folder: pass the folder that holds the {what} files "
                         f"({_describe(required)}) with {flag}")
    missing = []
    for entry in required:
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        if not any((folder / n).is_file() for n in names):
            missing.append(" or ".join(names))
    if missing:
        raise LabelError(f"{folder} is not a {what} folder: missing {', '.join(missing)}. "
                         f"Pass a folder holding {_describe(required)} with {flag}")
    return folder


def _describe(required) -> str:
    return ", ".join(r if isinstance(r, str) else " or ".join(r) for r in required)


def looks_like_path(source: str) -> bool:
    """A relative/absolute path rather than ``owner/name``."""
    return (source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
            or bool(re.match(r"^[A-Za-z]:", source)))


def resolve_model(source: str, *, required: Sequence[str | tuple[str, ...]], what: str,
                  allow_patterns: Sequence[str] | None = None, flag: str = "--model") -> Path:
    """A local folder holding the model files; downloads a hub id only when online."""
    if not source or not str(source).strip():
        raise LabelError(f"no {what} model given: pass a folder or a hub id with {flag}")
    source = str(source).strip()
    path = Path(source).expanduser()
    if path.exists():
        return check_folder(path, required, what, flag)
    if looks_like_path(source) or not _HUB_ID.match(source):
        raise LabelError(f"{what} model folder not found: {source}. Pass an existing folder (holding "
                         f"{_describe(required)}) or a hub id such as owner/name with {flag}")
    return check_folder(_from_hub(source, allow_patterns, what, flag), required, what, flag)


def _from_hub(repo_id: str, allow_patterns, what: str, flag: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LabelError(f"{what} model {repo_id!r} is a hub id but huggingface_hub is not installed; "
                         f"{download_advice(repo_id, flag)}") from None
    patterns = list(allow_patterns) if allow_patterns else None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache; try the network below
        pass
    if is_offline():
        raise LabelError(f"{what} model {repo_id!r} is not in the local hub cache and this machine is offline "
                         f"(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): {download_advice(repo_id, flag)}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - network down, unknown repo, gated repo...
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise LabelError(f"cannot download {what} model {repo_id!r} ({reason}); check the id, or "
                         f"{download_advice(repo_id, flag)}") from None

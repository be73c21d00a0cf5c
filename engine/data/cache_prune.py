"""Which cache entries each run uses (its manifest), and pruning the ones no run uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from engine import atomic

MANIFEST_DIR = "runs"


def write_manifest(cache_dir: Path, run_name: str, keys: Iterable[str]) -> Path:
    """Record which entries a run uses, so ``sdft cache prune`` knows what is still needed."""
    file = Path(cache_dir) / MANIFEST_DIR / f"{run_name}.json"
    atomic.write_text(file, json.dumps({"keys": sorted(set(keys))}, indent=0))
    return file


def referenced_keys(cache_dir: Path, only: str | None = None) -> set[str]:
    keys: set[str] = set()
    folder = Path(cache_dir) / MANIFEST_DIR
    if not folder.is_dir():
        return keys
    for file in folder.glob("*.json"):
        if only is not None and file.stem != only:
            continue
        try:
            keys.update(json.loads(file.read_text(encoding="utf-8")).get("keys", []))
        except (OSError, ValueError):
            continue
    return keys


def prune_cache(cache_dir: str | Path, keep: set[str], *, dry_run: bool = False) -> tuple[int, int]:
    """Delete entries whose key is not in ``keep``: (files, bytes) removed."""
    cache_dir = Path(cache_dir)
    files = bytes_ = 0
    for file in cache_dir.glob("??/*.safetensors"):
        if file.stem in keep:
            continue
        size = file.stat().st_size
        if not dry_run:
            file.unlink(missing_ok=True)
        files += 1
        bytes_ += size
    return files, bytes_

"""Which cache entries each run uses (its manifest), who uses a cache now, and pruning.

A cache folder can be shared by runs in different output folders (``cache.cache_dir``), so a
manifest belongs to one run folder, named by its full path, never by ``output_name`` alone (two
runs named alike would share one, and pruning for one deleted the other's latents). A run
registers on the cache, writing its manifest with its folder, before it writes its first entry;
``sdft cache prune`` refuses while any registered run is live (docs/latent-cache.md, "Pruning").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from engine import atomic

MANIFEST_DIR = "runs"


def manifest_path(cache_dir: Path, run_dir: str | Path) -> Path:
    """The manifest of the run folder ``run_dir``: its name, then a hash of its full path."""
    full = os.path.abspath(run_dir)
    digest = hashlib.sha256(full.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / MANIFEST_DIR / f"{Path(full).name}-{digest}.json"


def register_run(cache_dir: Path, run_dir: str | Path) -> Path:
    """Record that the run in ``run_dir`` uses this cache, before it writes to it; the keys it
    used before (a resumed run) stay listed until its new ones are written."""
    file = manifest_path(cache_dir, run_dir)
    keys = _read(file).get("keys", [])
    atomic.write_text(file, json.dumps({"run_dir": os.path.abspath(run_dir), "keys": keys}, indent=0))
    return file


def write_manifest(cache_dir: Path, run_dir: str | Path, keys: Iterable[str]) -> Path:
    """Record which entries a run uses, so ``sdft cache prune`` knows what is still needed."""
    file = manifest_path(cache_dir, run_dir)
    atomic.write_text(file, json.dumps({"run_dir": os.path.abspath(run_dir), "keys": sorted(set(keys))}, indent=0))
    return file


def registered_runs(cache_dir: Path) -> dict[Path, Path | None]:
    """manifest file -> the run folder it belongs to; None for a manifest of an older sdft
    (named by output_name, without its folder)."""
    out = {}
    folder = Path(cache_dir) / MANIFEST_DIR
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        run_dir = _read(file).get("run_dir")
        out[file] = Path(run_dir) if isinstance(run_dir, str) else None
    return out


def referenced_keys(cache_dir: Path, only: Path | None = None) -> set[str]:
    """Every key a manifest lists, or only those of the manifest file ``only``."""
    keys: set[str] = set()
    for file in registered_runs(cache_dir):
        if only is None or file == only:
            keys.update(_read(file).get("keys", []))
    return keys


def _read(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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

"""sha256 of large files, remembered by path + size + modification time.

A base model is several GB; hashing it for the saved model's provenance metadata on every
run would add seconds to each start. The cache lives in ``$XDG_CACHE_HOME/sdft`` (or
``~/.cache/sdft``); a changed file (size or mtime) is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine import atomic


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "sdft" / "file-sha256.json"


def _read() -> dict:
    try:
        return json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    stamp = [stat.st_size, stat.st_mtime_ns]
    known = _read()
    entry = known.get(key)
    if entry and entry.get("stamp") == stamp:
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    value = digest.hexdigest()
    known = _read()  # re-read: another run may have added entries meanwhile
    known[key] = {"stamp": stamp, "sha256": value}
    try:
        atomic.write_text(cache_file(), json.dumps(known, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home still trains; it only hashes again next time
    return value

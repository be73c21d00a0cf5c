"""sha256 of files, remembered by path + size + modification time: the engine's one hash cache.

A base model is several GB and a dataset thousands of images; hashing them again at every
start would add seconds to each run. :class:`HashIndex` keeps ``path -> size, mtime_ns, sha256``
in a JSON file; a changed file (size or mtime) is hashed again. Two indexes exist: the user's
(``$XDG_CACHE_HOME/sdft/file-sha256.json``, for base models, :func:`sha256_of`) and each latent
cache's ``index.json`` (its images, docs/formats.md "The latent cache key").
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from engine import atomic

FORMAT_VERSION = 1


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class HashIndex:
    """``path -> size, mtime_ns, sha256`` in ``file`` (None: remembered in memory only).

    Thread-safe; :meth:`save` merges with what another process wrote meanwhile, so two runs
    sharing the file lose nothing but a re-hash.
    """

    def __init__(self, file: Path | None):
        self.file = file
        self.entries: dict[str, dict] = self._read()
        self.changed: dict[str, dict] = {}
        self.lock = threading.Lock()

    def _read(self) -> dict[str, dict]:
        if self.file is None:
            return {}
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        images = data.get("images") if isinstance(data, dict) else None
        return dict(images) if isinstance(images, dict) else {}   # an older layout: hashed again

    def sha256(self, path: str | os.PathLike) -> str:
        key = str(Path(path).resolve())
        st = os.stat(path)
        with self.lock:
            hit = self.entries.get(key)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        digest = file_sha256(path)
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        with self.lock:
            self.entries[key] = self.changed[key] = entry
        return digest

    def save(self) -> None:
        if self.file is None or not self.changed:
            return
        with self.lock:
            merged = {**self._read(), **self.changed}
            atomic.write_text(self.file, json.dumps({"version": FORMAT_VERSION, "images": merged},
                                                    indent=1, sort_keys=True))
            self.entries.update(merged)
            self.changed = {}


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "sdft" / "file-sha256.json"


def sha256_of(path: str | os.PathLike) -> str:
    """A large file's sha256 through the user's hash index (a read-only home only re-hashes)."""
    index = HashIndex(cache_file())
    value = index.sha256(path)
    try:
        index.save()
    except OSError:
        pass  # a read-only home still trains; it only hashes again next time
    return value

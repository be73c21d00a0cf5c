"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file behind.

Every write goes to a temporary file in the same folder, is flushed to disk, then
renamed over the target (rename is atomic on POSIX and on Windows for same-volume moves).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FILE_MODE = 0o644


@contextmanager
def atomic_path(target: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    Use this for writers that want a file name (safetensors, torch.save). On an
    exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(target: str | os.PathLike, data: bytes, mode: int = FILE_MODE) -> None:
    with atomic_path(target, mode) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text(target: str | os.PathLike, text: str, mode: int = FILE_MODE) -> None:
    write_bytes(target, text.encode("utf-8"), mode)


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield ``<target>.tmp/`` to fill; on success it replaces ``target`` as a whole.

    An older ``target`` is moved aside first and deleted only after the rename, so at
    every moment either the old or the new complete folder exists.
    """
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left under ``folder``: hidden ``.NAME.XXXX.tmp``
    files, ``NAME.tmp/`` and ``NAME.old/`` folders (an ``.old`` whose new copy never arrived
    is put back instead). Only for a folder this process owns (a locked run folder): another
    writer's temporary files would look the same. Returns what was deleted."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.rglob("*")):
        name = path.name
        leftover_file = path.is_file() and name.startswith(".") and name.endswith(".tmp")
        leftover_dir = path.is_dir() and (name.endswith(".tmp") or name.endswith(".old"))
        if not (leftover_file or leftover_dir) or any(p in removed for p in path.parents):
            continue
        if leftover_dir and name.endswith(".old") and not path.with_name(name[:-4]).exists():
            # Killed between atomic_dir's two renames: the old folder is the only whole copy.
            os.replace(path, path.with_name(name[:-4]))
            continue
        if leftover_dir:
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed

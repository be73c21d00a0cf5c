"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file behind.

Every write goes to a temporary file in the same folder, is flushed to disk, then
renamed over the target (rename is atomic on POSIX and on Windows for same-volume moves).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FILE_MODE = 0o644
DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
LOW_SPACE = 16 * 2**20   # below this much free space a failed write is put down to a full disk


class WriteFailed(OSError):
    """A file could not be written: names the file and the free space where it was going.
    Callers add what was kept (the last state, the latents cached so far)."""

    def __init__(self, target: str | os.PathLike, cause: BaseException):
        from engine.units import format_bytes

        self.target = Path(target)
        self.free = free_bytes(self.target)
        self.cause = cause
        full = getattr(cause, "errno", None) in DISK_FULL or (self.free is not None and self.free < LOW_SPACE)
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror
        elif "no space left" in str(cause).lower():
            reason = "No space left on device"
        else:
            reason = "the disk is full" if full else (str(cause) or type(cause).__name__)
        super().__init__(getattr(cause, "errno", None) or (errno.ENOSPC if full else errno.EIO),
                         f"could not write {self.target}: {reason} ({format_bytes(self.free)} free on that disk)")
        self.disk_full = full

    def __str__(self) -> str:
        return self.args[1] if len(self.args) > 1 else super().__str__()


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the filesystem that holds ``path`` (or its nearest existing parent)."""
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


# How writers that are not Python's file objects report an I/O failure: torch's zip writer raises
# RuntimeError("... unexpected pos ..."), safetensors' Rust writer SafetensorError("I/O error: ... (os error 28)").
IO_WORDING = ("i/o error", "os error", "unexpected pos", "no space left", "file too large", "write")


def _as_write_failure(target: Path, exc: BaseException) -> BaseException:
    """An I/O failure inside an atomic write becomes WriteFailed; anything else stays as it is.
    Writers outside Python's io raise their own types, so those are recognised by their wording
    or by the space left on the disk."""
    if isinstance(exc, WriteFailed) or not isinstance(exc, Exception):
        return exc   # Ctrl-C and friends pass through untouched
    if not isinstance(exc, OSError):
        text = str(exc).lower()
        free = free_bytes(target)
        if not (any(w in text for w in IO_WORDING) or (free is not None and free < LOW_SPACE)):
            return exc
    return WriteFailed(target, exc)


@contextmanager
def atomic_path(target: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    Use this for writers that want a file name (safetensors, torch.save). On an
    exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteFailed(target, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        failure = _as_write_failure(target, exc)
        if failure is exc:
            raise
        raise failure from exc


def write_bytes(target: str | os.PathLike, data: bytes, mode: int = FILE_MODE) -> None:
    with atomic_path(target, mode) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text(target: str | os.PathLike, text: str, mode: int = FILE_MODE) -> None:
    write_bytes(target, text.encode("utf-8"), mode)


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around one file's write inside :func:`atomic_dir`: a failure names that file."""
    try:
        yield
    except BaseException as exc:
        failure = _as_write_failure(Path(path), exc)
        if failure is exc:
            raise
        raise failure from exc


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
    try:
        tmp.mkdir(parents=True)
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # Name the file inside that failed, at the place it was going to have.
        cause = exc.cause if isinstance(exc, WriteFailed) else exc
        inner = exc.target if isinstance(exc, WriteFailed) else getattr(exc, "filename", None)
        where = target / Path(inner).relative_to(tmp) if inner and Path(inner).is_relative_to(tmp) else target
        failure = _as_write_failure(where, cause)
        if failure is exc:
            raise
        raise failure from cause
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

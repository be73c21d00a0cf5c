"""Reading the files a run names: each must be a regular file of a sane size.

A run reads its TOML, the dataset config, metadata files, prompt files and caption sidecars.
Any of them could be a device (``/dev/zero`` is read until memory runs out), a FIFO (a read
blocks forever) or a file far larger than its kind ever is (a 50 MB run file took 23 minutes
to check). Each is looked at with ``stat`` first, which never blocks, and refused by name with
what to do instead. No torch here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MIB = 1 << 20
# The largest file of each kind sdft reads; real ones are far smaller (docs/run-file.md, "Reading").
LIMITS = {
    "run file": 4 * MIB,
    "dataset config": 4 * MIB,
    "prompts file": 4 * MIB,
    "caption file": 1 * MIB,
    "metadata file": 1024 * MIB,
}


class FileRefused(ValueError):
    """A file sdft will not read: not a regular file, or over its kind's size limit."""

    def __init__(self, path: str | Path, reason: str, hint: str):
        self.path, self.reason, self.hint = str(path), reason, hint
        super().__init__(f"{path}: {reason} ({hint})")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_file(path: str | Path, what: str) -> int:
    """The size of ``path`` when it is a regular file within the limit for ``what`` (a key of
    LIMITS); FileRefused otherwise. FileNotFoundError and other OSErrors pass through."""
    info = os.stat(path)   # follows links; never opens, so a FIFO cannot block it
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(path, f"is {_kind(info.st_mode)}, not a regular file", f"give the path of a {what}")
    limit = LIMITS[what]
    if info.st_size > limit:
        raise FileRefused(path, f"is {_size(info.st_size)}, over the {_size(limit)} a {what} may have",
                          f"is this the right file? A {what} is far smaller")
    return info.st_size


def file_problem(path: str | Path, what: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) when ``path`` is missing or refused; None when readable."""
    try:
        check_file(path, what)
    except FileRefused as exc:
        return f"{path} {exc.reason}", exc.hint
    except FileNotFoundError:
        return f"{what} not found: {path}", "check the path (relative paths start at the TOML's folder)"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions"
    return None


def read_bytes(path: str | Path, what: str) -> bytes:
    """The bytes of a checked file; reads no more than the limit even if it grows meanwhile."""
    check_file(path, what)
    with open(path, "rb") as fh:
        data = fh.read(LIMITS[what] + 1)
    if len(data) > LIMITS[what]:
        raise FileRefused(path, f"grew over the {_size(LIMITS[what])} a {what} may have while it was read",
                          "read it again when it is written")
    return data


def read_text(path: str | Path, what: str, encoding: str = "utf-8-sig") -> str:
    return read_bytes(path, what).decode(encoding)


def _size(n: int) -> str:
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"

"""Copies of the labels a labelling run replaces, so a replaced hand-written caption is never lost.

A run with the overwrite policy copies each label file it is about to replace (a sidecar, or the
whole metadata JSON) into ``<dataset folder>/sdft-label-backups/<date_time>/``, at the same path
relative to the dataset folder, before the new text is written. The folder holds a RESTORE.txt
that says how to put the files back and a manifest.json that :func:`restore_backup` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine import atomic

BACKUP_DIR_NAME = "sdft-label-backups"
MANIFEST = "manifest.json"
RESTORE_NOTE = "RESTORE.txt"


class LabelBackup:
    """Collects copies for one run; the folder is made on the first copy (none when nothing is replaced)."""

    def __init__(self, root: Path | None, reason: str = "a labelling run"):
        self.root = Path(root) if root is not None else None
        self.reason = reason
        self.folder: Path | None = None
        self.files: dict[str, str] = {}       # path in the backup -> the original file

    def keep(self, path: str | Path) -> None:
        """Copy ``path`` into the backup before it is replaced (an absent or empty file has nothing to keep)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return
        if not data.strip() or str(path.resolve()) in self.files.values():
            return
        if self.root is None:
            self.root = path.parent
        if self.folder is None:
            self.folder = _new_folder(self.root / BACKUP_DIR_NAME)
        try:
            rel = path.resolve().relative_to(self.root.resolve())
        except ValueError:  # a label outside the dataset folder: kept under its full path
            rel = Path("outside", *path.resolve().parts[1:])
        atomic.write_bytes(self.folder / rel, data)
        self.files[rel.as_posix()] = str(path.resolve())
        self._write_notes()

    def _write_notes(self) -> None:
        assert self.folder is not None and self.root is not None
        atomic.write_text(self.folder / MANIFEST, json.dumps(
            {"reason": self.reason, "root": str(self.root.resolve()), "files": self.files}, indent=1) + "\n")
        lines = [f"sdft kept these {len(self.files)} label file(s) before {self.reason} replaced them.",
                 "", "To put them back (each over the label written since), copy this folder's files",
                 "back into the dataset folder, e.g.", "",
                 f'  cp -a "{self.folder}/." "{self.root.resolve()}/"', "",
                 f"(then delete {MANIFEST} and {RESTORE_NOTE} there), or in Python:", "",
                 f'  from engine.data.label_backups import restore_backup; restore_backup("{self.folder}")',
                 "", "Files:"]
        lines += [f"  {rel} -> {original}" for rel, original in self.files.items()]
        atomic.write_text(self.folder / RESTORE_NOTE, "\n".join(lines) + "\n")


def _new_folder(parent: Path) -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = parent / stamp, 2
    while folder.exists():
        folder, n = parent / f"{stamp}-{n}", n + 1
    folder.mkdir(parents=True)
    return folder


def restore_backup(folder: str | Path) -> list[Path]:
    """Put every file of a backup folder back where it was (atomically); returns the files restored."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not an sdft label backup ({MANIFEST} unreadable: {exc})") from None
    restored = []
    for rel, original in manifest.get("files", {}).items():
        atomic.write_bytes(original, (folder / rel).read_bytes())
        restored.append(Path(original))
    return restored

"""What a run folder holds from an earlier start, and moving it aside for ``--restart``.

A start never destroys a run's history (docs/run-folder.md, "Starting again"): a run folder
that holds states or events is continued with ``--resume latest`` or started over with
``--restart``, which moves the earlier run into ``earlier/<time>/`` inside the folder.
No torch here: ``--check`` and the wizard ask before anything is loaded.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

EARLIER = "earlier"
# What one run writes into its folder (docs/run-folder.md); the lock and earlier runs stay.
RUN_ENTRIES = ("events.jsonl", "config.toml", "sdft.log", "state", "checkpoints", "samples", "logs")
_STATE_NAME = re.compile(r"^.+-step(?P<step>\d{8})-state$")


@dataclass(frozen=True)
class RunHistory:
    """The earlier run a folder holds: its states (by step) and whether it has an event log."""

    run_dir: Path
    states: tuple[tuple[int, Path], ...]   # (step, folder), oldest first
    has_events: bool                       # events.jsonl records at least one training step

    @property
    def newest_state(self) -> tuple[int, Path] | None:
        return self.states[-1] if self.states else None

    def describe(self) -> str:
        newest = self.newest_state
        if newest is None:
            return f"{self.run_dir} holds an earlier run (its events.jsonl; no resumable state)"
        step, folder = newest
        return f"{self.run_dir} holds an earlier run: its newest state is step {step}, {folder}"

    def ways_on(self, config: str | Path) -> str:
        """Both ways on, as commands."""
        resume = f"continue it with `sdft train {config} --resume latest`, or " if self.states else ""
        return (f"{resume}start over with `sdft train {config} --restart` (the earlier run is kept in "
                f"{self.run_dir / EARLIER}/)")


def state_folders(state_root: Path) -> list[tuple[int, Path]]:
    """Complete-looking state folders under ``state/`` by step (the checksums are not read)."""
    if not state_root.is_dir():
        return []
    found = []
    for folder in state_root.iterdir():
        match = _STATE_NAME.match(folder.name)
        if match and folder.is_dir() and (folder / "manifest.json").is_file():
            found.append((int(match.group("step")), folder))
    return sorted(found)


def run_history(run_dir: str | Path) -> RunHistory | None:
    """The earlier run in ``run_dir``, or None when a start there loses nothing."""
    run_dir = Path(run_dir)
    states = tuple(state_folders(run_dir / "state"))
    has_events = _records_a_step(run_dir / "events.jsonl")
    if not states and not has_events:
        return None
    return RunHistory(run_dir, states, has_events)


_STEP_EVENTS = (b'"event": "step"', b'"event": "progress"')


def _records_a_step(events: Path) -> bool:
    """Whether an event log holds a training step. A log of a run that failed before its first
    step (a missing package, a full disk while caching) holds no history worth a question."""
    try:
        with open(events, "rb") as fh:
            tail = b""
            while chunk := fh.read(1 << 20):
                if any(marker in tail + chunk for marker in _STEP_EVENTS):
                    return True
                tail = chunk[-32:]
    except OSError:
        return False
    return False


def move_aside(run_dir: str | Path) -> Path:
    """Move what an earlier run wrote into ``<run_dir>/earlier/<UTC time>/``; returns that
    folder. Renames within one folder: instant, and nothing is copied or deleted."""
    run_dir = Path(run_dir)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = run_dir / EARLIER / stamp
    number = 1
    while target.exists():
        number += 1
        target = run_dir / EARLIER / f"{stamp}-{number}"
    target.mkdir(parents=True)
    for name in RUN_ENTRIES:
        if (run_dir / name).exists() or (run_dir / name).is_symlink():
            os.replace(run_dir / name, target / name)
    return target

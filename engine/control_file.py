"""Requests to a run from another process: ``RUN_DIR/control.json`` (docs/run-folder.md).

``sdft watch`` (or anything else) writes ``{"seq": n, "request": ..., "by": ...}`` atomically;
the run's main process looks at the file at every step boundary (one ``stat``) and hands a
request it has not seen to its RunControl. From there the per-step agreement carries it to every
process of a multi-GPU run (engine/train/distributed.py), so a run started in tmux on a rented box
can be stopped, paused, saved or sampled from another shell, exactly as from its own dashboard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine import atomic

FILE_NAME = "control.json"
REQUESTS = ("stop", "save", "sample", "pause", "resume")


def send_request(run_dir: str | Path, request: str, by: str) -> int:
    """Ask the run in ``run_dir`` to ``request`` (one of REQUESTS) at its next step; the request's seq."""
    if request not in REQUESTS:
        raise ValueError(f"unknown request {request!r}: one of {', '.join(REQUESTS)}")
    path = Path(run_dir) / FILE_NAME
    seq = _read(path).get("seq", 0) + 1
    atomic.write_text(path, json.dumps({"seq": seq, "request": request, "by": by}) + "\n")
    return seq


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("seq"), int) else {}


class ControlFileReader:
    """The run's side: requests newer than the run's start are applied, once each."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / FILE_NAME
        self.seen_seq = _read(self.path).get("seq", 0)   # a request left by an earlier run is not replayed
        self.seen_mtime = self._mtime()

    def _mtime(self) -> int | None:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    def apply(self, control) -> str | None:
        """Hand a new request to ``control``; the request, or None when there is none."""
        mtime = self._mtime()
        if mtime is None or mtime == self.seen_mtime:
            return None
        self.seen_mtime = mtime
        data = _read(self.path)
        if data.get("seq", 0) <= self.seen_seq or data.get("request") not in REQUESTS:
            return None
        self.seen_seq = data["seq"]
        request, by = data["request"], str(data.get("by") or "another process")
        if request == "stop":
            control.request_stop(f"stop requested by {by}", save_state=True)
        elif request == "save":
            control.request_save()
        elif request == "sample":
            control.request_sample()
        elif request == "pause":
            control.pause()
        else:
            control.resume()
        return request

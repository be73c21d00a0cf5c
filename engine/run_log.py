"""A run's ``sdft.log``: what the libraries say while sdft trains, and the traceback of a failure.

The console is for sdft's own words (events, as engine/console.py and the dashboard show them).
Python warnings (diffusers' multi-line FutureWarning at the first sample, a deprecation in a
data loader thread) and the model libraries' loggers go to the run folder's ``sdft.log`` for the
duration of a run instead, and are restored afterwards, so a tool that runs several things in one
process (the wizard, ``sdft bench``) gets its own settings back. Writing never raises: on a full
disk the log is what gives way, never the run or the failure being reported.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.quiet import LIBRARY_LOGGERS

_lock = threading.Lock()   # loader threads warn too: one whole entry at a time


def append_to_log(path: Path, text: str) -> None:
    """``text`` appended to the run's log (its folder made if needed); an OSError is swallowed."""
    try:
        with _lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


class _ToRunLog(logging.Handler):
    """A library logger's records, appended to the run's log (never "--- Logging error ---")."""

    def __init__(self, path: Path):
        super().__init__(level=logging.WARNING)
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            append_to_log(self.path, self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not worth a crash
            pass


@contextmanager
def library_output_to(path: Path) -> Iterator[None]:
    """Inside: Python warnings and the libraries' WARNING records go to ``path``, not stderr."""
    handler = _ToRunLog(path)
    previous_show = warnings.showwarning

    def to_log(message, category, filename, lineno, file=None, line=None) -> None:
        if file is not None:   # someone asked for a stream by name: theirs
            previous_show(message, category, filename, lineno, file, line)
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        append_to_log(path, f"{stamp} {warnings.formatwarning(message, category, filename, lineno, line)}")

    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        logger.handlers[:] = [handler]   # their own console handlers (transformers, diffusers) stand aside
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    warnings.showwarning = to_log
    try:
        yield
    finally:
        warnings.showwarning = previous_show
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate

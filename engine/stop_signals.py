"""The one stop-on-signal policy of every long command (training, the multi-GPU launcher, the
labellers, the dashboard), so Ctrl-C, SIGTERM and a lost terminal mean the same thing everywhere.

* The first SIGINT, SIGTERM or SIGHUP asks to stop cleanly: ``on_stop(name)`` (a training run
  stops at the next step with a resumable state; a labeller after the current batch).
* Another Ctrl-C aborts: ``on_abort()``, by default ``KeyboardInterrupt``. One press can reach a
  process twice within milliseconds (from the terminal and passed on by a launcher), so a second
  SIGINT within ``SAME_PRESS_S`` of the first is the same press. A second SIGTERM or SIGHUP only
  repeats the request.
* ``detached``: a lost terminal is not a stop; SIGHUP calls ``on_detach()`` (default: ignored).

Handlers can only be installed from the main thread; elsewhere (a library caller's thread) the
context does nothing and the caller's own handling stays.
"""

from __future__ import annotations

import signal
import time
from typing import Callable

SAME_PRESS_S = 1.0
AGAIN_TO_ABORT = "Ctrl-C again to abort without saving"


def stop_signal_numbers() -> list[signal.Signals]:
    names = ("SIGINT", "SIGTERM", "SIGHUP")   # SIGHUP does not exist on Windows
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


class StopSignals:
    """A context that routes the stop signals to the policy above while it is open."""

    def __init__(self, on_stop: Callable[[str], None], *, on_abort: Callable[[], None] = _raise_interrupt,
                 detached: bool = False, on_detach: Callable[[], None] | None = None) -> None:
        self.on_stop, self.on_abort = on_stop, on_abort
        self.detached, self.on_detach = detached, on_detach
        self.stop_asked_at: float | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        try:
            for number in stop_signal_numbers():
                self.previous[number] = signal.signal(number, self.handle)
        except ValueError:   # not the main thread: leave the caller's handlers alone
            self._restore()
        return self

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def handle(self, signum: int, _frame=None) -> None:
        name = signal.Signals(signum).name
        if name == "SIGHUP" and self.detached:
            if self.on_detach is not None:
                self.on_detach()
            return
        now = time.monotonic()
        if self.stop_asked_at is not None and name == "SIGINT":
            if now - self.stop_asked_at >= SAME_PRESS_S:
                self.on_abort()
            return
        if self.stop_asked_at is None:
            self.stop_asked_at = now
        self.on_stop(name)

    def _restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()

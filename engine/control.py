"""RunControl: the only way a UI steers a running engine.

Requests are thread-safe flags the training loop polls at optimizer-step boundaries:
stop (writes a resumable state by default), save now, sample now, pause/resume.
"""

from __future__ import annotations

import threading


class RunControl:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._save = threading.Event()
        self._sample = threading.Event()
        self.stop_reason = ""
        self.save_state_on_stop = True

    # ---- called from the UI (any thread)
    def request_stop(self, reason: str = "stop requested", save_state: bool = True) -> None:
        self.stop_reason = reason
        self.save_state_on_stop = save_state
        self._stop.set()
        self._resume.set()  # a paused run must wake up to stop

    def request_save(self) -> None:
        self._save.set()

    def request_sample(self) -> None:
        self._sample.set()

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    # ---- polled by the training loop
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def take_save_request(self) -> bool:
        return _take(self._save)

    def take_sample_request(self) -> bool:
        return _take(self._sample)

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused; True once running again (or stopping)."""
        return self._resume.wait(timeout)


def _take(flag: threading.Event) -> bool:
    if flag.is_set():
        flag.clear()
        return True
    return False

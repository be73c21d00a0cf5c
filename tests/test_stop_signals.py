"""The one stop-signal policy (engine/stop_signals.py), with real signals sent to this process."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from engine import stop_signals
from engine.stop_signals import StopSignals

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


def _send(number: int) -> None:
    os.kill(os.getpid(), number)
    time.sleep(0.05)   # the handler runs between bytecodes of the main thread


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_the_first_signal_asks_to_stop(name):
    asked = []
    with StopSignals(asked.append):
        _send(getattr(signal, name))
    assert asked == [name]


def test_ctrl_c_again_aborts_but_not_the_same_press(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(stop_signals.time, "monotonic", lambda: clock[0])
    asked, aborted = [], []
    with StopSignals(asked.append, on_abort=lambda: aborted.append(True)):
        _send(signal.SIGINT)
        clock[0] += 0.01          # the same press, passed on by a launcher
        _send(signal.SIGINT)
        assert asked == ["SIGINT"] and aborted == []
        clock[0] += stop_signals.SAME_PRESS_S
        _send(signal.SIGINT)      # a person pressing again
    assert aborted == [True]


def test_default_abort_is_keyboard_interrupt(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(stop_signals.time, "monotonic", lambda: clock[0])
    with pytest.raises(KeyboardInterrupt):
        with StopSignals(lambda name: None):
            _send(signal.SIGINT)
            clock[0] += 5
            _send(signal.SIGINT)


def test_a_second_sigterm_repeats_the_request_and_never_aborts():
    asked = []
    with StopSignals(asked.append, on_abort=lambda: pytest.fail("SIGTERM must not abort")):
        _send(signal.SIGTERM)
        _send(signal.SIGTERM)
    assert asked == ["SIGTERM", "SIGTERM"]


def test_detached_lets_the_terminal_go():
    asked, let_go = [], []
    with StopSignals(asked.append, detached=True, on_detach=lambda: let_go.append(True)):
        _send(signal.SIGHUP)
    assert asked == [] and let_go == [True]
    with StopSignals(asked.append, detached=True):   # default: ignored, the run goes on
        _send(signal.SIGHUP)
    assert asked == []


def test_the_previous_handlers_come_back():
    before = {n: signal.getsignal(n) for n in stop_signals.stop_signal_numbers()}
    with StopSignals(lambda name: None):
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
    assert {n: signal.getsignal(n) for n in before} == before


def test_outside_the_main_thread_it_does_nothing():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def worker():
        with StopSignals(lambda name: None) as signals:
            seen.append(dict(signals.previous))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [{}] and signal.getsignal(signal.SIGTERM) == before


def test_every_long_command_uses_the_policy():
    """No second copy: the headless run, the launcher, the labellers and the dashboard."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in ("engine/cli.py", "engine/launch.py", "engine/labeling/cli.py", "sdft_tui/dashboard.py"):
        text = (root / path).read_text()
        assert "StopSignals" in text, path
        assert "signal.signal(" not in text, f"{path} installs a handler of its own"

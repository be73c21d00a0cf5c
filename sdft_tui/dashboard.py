"""Entry points of the run dashboard.

* ``run_dashboard(config_path)`` — ``sdft train RUN.toml --tui``: an app that opens the run
  screen directly; returns 0 (completed), 3 (failed) or 130 (stopped).
* ``watch_run(run_dir)`` — ``sdft watch RUN_DIR``: a read-only dashboard that follows the run's
  ``events.jsonl``; opening or closing it never touches the run.
* ``open_run_screen(app, config_path)`` — the wizard's review screen starts a run in its own app.

Life over SSH: when the terminal goes away (SIGHUP), or on SIGTERM, the run stops cleanly, saving
a resumable state, and the process waits for that save before it exits; a ``detached`` run keeps
training without a screen when the terminal goes (follow it with ``sdft watch``). The policy is
the one of every long command (engine/stop_signals.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding

from engine.vocabulary import RunStatus
from sdft_tui.engine_handle import EngineHandle
from sdft_tui.screens.dashboard_base import DashboardScreen
from sdft_tui.screens.run import RunScreen, WatchScreen
from sdft_tui.text import PlainNotifications

EVENTS_FILE = "events.jsonl"


class DashboardApp(PlainNotifications, App[int]):
    """An app whose only screen is a dashboard; its exit code is the run's."""

    TITLE = "sdft"
    ENABLE_COMMAND_PALETTE = False   # every action has its own key; keeps the footer short at 80 columns
    # Ctrl+C is what people press over SSH: treat it as quit (which asks while training).
    BINDINGS = [Binding("ctrl+c", "quit", "Quit", show=False, priority=True)]

    def __init__(self, make_screen: Callable[[], DashboardScreen]) -> None:
        super().__init__()
        self._make_screen = make_screen
        self.dashboard: DashboardScreen | None = None
        self.hung_up = False

    def on_mount(self) -> None:
        self.dashboard = self._make_screen()
        self.push_screen(self.dashboard, callback=self._dashboard_closed)

    def _dashboard_closed(self, code: int | None) -> None:
        code = 0 if code is None else int(code)
        self.exit(code, return_code=code)

    def action_quit(self) -> None:
        """Ctrl+Q goes through the dashboard's own quit (which asks while training)."""
        if self.dashboard is not None and self.dashboard.is_attached:
            if self.screen is not self.dashboard:
                return   # a question is already open: answer it first
            self.dashboard.action_quit_dashboard()
        else:
            self.exit(0, return_code=0)

    def stop_for_signal(self, name: str) -> None:
        """SIGTERM, or SIGHUP when the terminal is gone: nobody can answer a question, so act at
        once: ask the engine to stop with a resumable state; the app closes and
        ``run_dashboard`` waits for the save."""
        self.hung_up = name == "SIGHUP"
        screen = self.dashboard
        if isinstance(screen, RunScreen) and screen.handle.running:
            screen.control.request_stop(f"{name} received" + (" (terminal lost)" if self.hung_up else ""),
                                        save_state=True)
        self.exit(None, return_code=0)

    def let_go(self) -> None:
        """A detached run lost its terminal: close the screen, training goes on."""
        self.hung_up = True
        screen = self.dashboard
        if isinstance(screen, RunScreen) and screen.handle.running:
            screen.stop_on_close = False
        self.exit(None, return_code=0)


def dashboard_signals(app: DashboardApp, *, detached: bool):
    """The stop-signal policy (engine/stop_signals.py) bound to ``app``; Ctrl-C is a key here
    (the quit question), so a SIGINT comes from ``kill`` and stops like SIGTERM."""
    from engine.stop_signals import StopSignals

    return StopSignals(app.stop_for_signal, on_abort=lambda: app.stop_for_signal("SIGINT"),
                       detached=detached, on_detach=app.let_go)


def run_dashboard(config_path, *, detached: bool = False, resume: str | None = None,
                  allow_changed: bool = False, restart: bool = False, engine=None) -> int:
    """Train ``config_path`` with the dashboard; returns 0 completed / 3 failed / 130 stopped.

    ``resume``, ``allow_changed`` and ``restart`` are ``sdft train``'s options of those names;
    ``engine`` replaces the real trainer (tests)."""
    from sdft_tui.widgets.graphics import prepare_graphics

    prepare_graphics()  # sample images in Kitty/Sixel where the terminal can show them
    handle = EngineHandle()
    app = DashboardApp(lambda: RunScreen(config_path, engine=engine, handle=handle, resume=resume,
                                         allow_changed=allow_changed, restart=restart))
    with dashboard_signals(app, detached=detached):
        try:
            app.run()
        except Exception as exc:  # noqa: BLE001 - a dead terminal can break the UI; the run matters more
            _say(f"sdft: the dashboard closed unexpectedly ({exc!r}); waiting for the run to finish")
            if not detached and not handle.control.stop_requested:
                handle.control.request_stop("the dashboard crashed", save_state=True)
    code = finish_run(handle, detached=detached)
    if handle.done.is_set():
        summary = outcome_summary(handle.result, config_path)
        if summary:
            _say(summary)   # the outcome panel went away with the screen: leave it in the terminal
    return code


def outcome_summary(result, config_path) -> str | None:
    """One or two lines for the shell after the dashboard closed: what happened, what to run next."""
    status = getattr(result, "status", None)
    if status == RunStatus.COMPLETED:
        model = getattr(result, "model_path", None)
        return "sdft: training completed" + (f"; model: {model}" if model else "")
    if status == RunStatus.STOPPED:
        state = getattr(result, "state_path", None)
        if state:
            return f"sdft: training stopped; resume with:\n  sdft train {config_path} --resume {state}"
        return "sdft: training stopped (no resumable state was saved)"
    if status == RunStatus.FAILED:   # the dashboard showed why; it is gone now, so say it again
        log = getattr(result, "log_path", None)
        return f"sdft: training failed: {getattr(result, 'message', '') or 'see the log'}" + (
            f"\n  details: {log}" if log else "")
    return None   # an engine that raised is reported by finish_run


def finish_run(handle: EngineHandle, *, detached: bool) -> int:
    """After the UI is gone: make sure the engine has ended (saved) before we return."""
    if handle.started and not handle.done.is_set():
        if not detached:
            if not handle.control.stop_requested:
                handle.control.request_stop("the dashboard was closed", save_state=True)
            _say("sdft: stopping the run: waiting for the resumable state to be saved…")
        else:
            _say("sdft: the dashboard is closed; the run goes on (follow it with `sdft watch RUN_DIR`)")
        handle.done.wait()
    if handle.error:
        _say(f"sdft: training failed: {handle.error}")
    return handle.exit_code if handle.started else 0


def watch_run(run_dir) -> int:
    """Follow ``<run_dir>/events.jsonl`` read-only (a run dir or the file itself). 0, or 2 when
    the folder does not exist."""
    path = Path(run_dir)
    events = path if path.is_file() or path.name == EVENTS_FILE else path / EVENTS_FILE
    if not events.parent.is_dir():
        _say(f"sdft watch: no such run folder: {events.parent}\n"
             f"  give the folder of a run (it holds {EVENTS_FILE}), e.g. runs/my-run")
        return 2
    from sdft_tui.widgets.graphics import prepare_graphics

    prepare_graphics()
    app = DashboardApp(lambda: WatchScreen(events))
    app.run()
    return 0


def open_run_screen(app: App, config_path, *, engine=None, on_close: Callable[[int], None] | None = None,
                    resume: str | None = None, restart: bool = False) -> RunScreen:
    """Push the run screen onto ``app`` (the wizard); ``on_close`` gets the exit code. ``resume``
    and ``restart`` are the answer to "the folder holds an earlier run" (sdft train's options)."""
    screen = RunScreen(config_path, engine=engine, resume=resume, restart=restart)
    app.last_run = screen   # the wizard reports its outcome in the terminal when it closes
    app.push_screen(screen, callback=on_close)
    return screen


def report_last_run(screen: RunScreen | None) -> str | None:
    """After an app that started a run has closed: wait until the run has saved, then the lines
    for the shell (the model, or the resume command), or None when no run was started."""
    if screen is None or not screen.handle.started:
        return None
    finish_run(screen.handle, detached=False)
    return outcome_summary(screen.handle.result, screen.config_path)


def _say(text: str) -> None:
    """stderr, which may be a dead terminal after SIGHUP: never let that raise."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass

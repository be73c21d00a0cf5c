"""The run dashboard: live loss, memory, throughput, samples and events; steering keys.

``RunScreen`` runs the engine in a Textual thread worker and steers it only through
``RunControl``; ``WatchScreen`` follows another process's ``events.jsonl`` read-only. Both feed
the same ``RunFigures`` and draw the same panes, so ``sdft watch`` shows what the live screen
shows (sdft_tui/screens/dashboard_base.py).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widgets import Static

from engine.control import RunControl
from engine.events import RunFinished, read_events
from engine.vocabulary import ControlStatus, RunStatus, exit_code_for
from sdft_tui.bridge import EventFollower
from sdft_tui.engine_handle import Engine, EngineDone, EngineHandle, default_engine, default_log_path, run_folder_of
from sdft_tui.screens.confirm import ChoiceScreen, ConfirmScreen
from sdft_tui.screens.dashboard_base import DashboardScreen

# The keys that steer a run, the same on its own dashboard and in `sdft watch`.
STEERING = [
    Binding("x", "stop", "Stop"),
    Binding("s", "save_now", "Save"),
    Binding("n", "sample_now", "Sample"),
    Binding("p", "pause", "Pause"),
    Binding("p", "resume", "Resume"),   # shown instead of Pause while paused (check_action)
]


def stop_question() -> ChoiceScreen:
    """The stop key's question: "save_stop", "stop" or "cancel"."""
    return ChoiceScreen(
        "Stop training now? A resumable state is saved first, so you can continue later. Save the model "
        "of this step too, to use it now?",
        [("save_stop", "Save model + stop (s)"), ("stop", "Stop (y)"), ("cancel", "Keep training (n)")],
        keys={"s": "save_stop", "y": "stop", "n": "cancel"})


class RunScreen(DashboardScreen):
    """Runs ``engine`` (the real trainer by default) in a thread worker and steers it."""

    empty_samples_hint = "no samples yet (n: sample now)"

    BINDINGS = [
        *STEERING,
        # inside the wizard the app's ctrl+q stands aside for this one (SdftApp.check_action)
        Binding("ctrl+q", "quit_dashboard", "Quit", show=False, priority=True),
    ]

    def __init__(self, config_path, *, engine: Engine | None = None, handle: EngineHandle | None = None,
                 log_path: Path | str | None = None, resume: str | None = None, allow_changed: bool = False,
                 restart: bool = False, name: str | None = None) -> None:
        super().__init__(name=name)
        self.config_path = Path(config_path)
        self.engine = engine
        # sdft train's --resume / --allow-changed / --restart, passed on only when given
        self.engine_options = {k: v for k, v in (("resume", resume), ("allow_changed", allow_changed),
                                                 ("restart", restart)) if v}
        self.handle = handle or EngineHandle()
        if log_path is not None:
            self.handle.log_path = Path(log_path)
        elif self.handle.log_path is None:
            self.handle.log_path = default_log_path(config_path)
        self.run_label = self.config_path.stem
        self.quit_when_done = False
        # False when the run must outlive the screen (a detached run whose terminal went away).
        self.stop_on_close = True

    @property
    def control(self) -> RunControl:
        return self.handle.control

    def on_mount(self) -> None:
        super().on_mount()
        self.handle.started = True
        self.run_engine()

    def on_unmount(self) -> None:
        super().on_unmount()
        if self.handle.running and self.stop_on_close and not self.control.stop_requested:
            # The app is closing under a running engine (e.g. the wizard quit): stop cleanly;
            # the worker thread keeps the process alive until the state is saved.
            self.control.request_stop("the dashboard was closed", save_state=True)

    @work(thread=True, exit_on_error=False, group="engine", description="training")
    def run_engine(self) -> None:
        handle = self.handle
        earlier = self.earlier_events()
        if earlier:   # before the engine's first event: call_from_thread waits for it
            self.app.call_from_thread(self.carry_over, earlier)
        try:
            engine = self.engine or default_engine()
            handle.result = engine(self.config_path, sink=self.sink, control=handle.control,
                                   log_path=handle.log_path, **self.engine_options)
        except BaseException as exc:  # noqa: BLE001 - any failure must reach the screen
            handle.error = f"{type(exc).__name__}: {exc}"
            handle.error_traceback = traceback.format_exc()
        finally:
            handle.done.set()
            try:
                self.post_message(EngineDone())
            except Exception:  # noqa: BLE001 - the app is gone; run_dashboard reads the handle
                pass

    def earlier_events(self) -> list:
        """On a resume, the run's events so far (read on the worker thread: a long run's log is
        big), so the loss chart and the elapsed time go on from them, as ``sdft watch`` shows them."""
        folder = run_folder_of(self.config_path) if self.engine_options.get("resume") else None
        try:
            return read_events(folder / "events.jsonl") if folder is not None else []
        except Exception:  # noqa: BLE001 - a log it cannot read costs the earlier points, never the run
            return []

    def carry_over(self, events: list) -> None:
        self.figures.carry_over(events)
        self.repaint(force=True)

    def on_engine_done(self, _message: EngineDone) -> None:
        self.absorb(self.sink.drain())
        if self.figures.finished is None:
            # The engine ended without its RunFinished event (it raised, or is a minimal engine).
            h = self.handle
            status = h.status or RunStatus.FAILED
            message = h.error or getattr(h.result, "message", "") or ""
            self.absorb([RunFinished(
                status=status, step=self.figures.step, epoch=self.figures.last.epoch if self.figures.last else 0,
                message=message, model_path=getattr(h.result, "model_path", None),
                state_path=getattr(h.result, "state_path", None),
                time=self.figures.last_time or time.time(),
            )])
        self.repaint(force=True)
        if self.quit_when_done:
            self.dismiss(self.exit_code)

    @property
    def exit_code(self) -> int:
        if self.figures.finished is not None:
            return exit_code_for(self.figures.finished.status)
        return self.handle.exit_code

    def config_file(self):
        return self.config_path

    def resume_config(self):
        return self.config_path

    def log_file(self):
        return self.handle.log_path

    def display_status(self) -> str:
        status = self.figures.status
        if self.figures.running:
            if self.control.stop_requested and status != ControlStatus.STOPPING:
                return ControlStatus.STOPPING
            if self.control.paused and status == ControlStatus.RUNNING:
                return "pausing"
        return status

    # ------------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("stop", "save_now", "sample_now", "pause", "resume"):
            if not self.handle.started or self.handle.done.is_set():
                return False  # the run is over: the keys leave the footer
            if action == "pause" and self.control.paused:
                return False
            if action == "resume" and not self.control.paused:
                return False
            if self.control.stop_requested:
                return None   # shown greyed while the engine stops
        return True

    def note(self, text: str, level: str = "info") -> None:
        self.figures.note(text, level)
        self.repaint()

    def action_stop(self) -> None:
        if not self.handle.running or self.control.stop_requested:
            return

        def answered(answer: str | None) -> None:
            if answer not in ("stop", "save_stop") or not self.handle.running:
                return
            if answer == "save_stop":   # the model of this very step, beside the resumable state
                self.control.request_save()
            self.control.request_stop("stopped from the dashboard", save_state=True)
            self.note("stop requested: saving " + ("the model and " if answer == "save_stop" else "")
                      + "a resumable state", "warning")

        self.app.push_screen(stop_question(), answered)

    def action_save_now(self) -> None:
        if self.handle.running:
            self.control.request_save()
            self.note("save requested (after the current step)")

    def action_sample_now(self) -> None:
        if self.handle.running:
            self.control.request_sample()
            self.note("sample requested (after the current step)")

    def action_pause(self) -> None:
        if not self.handle.running:
            return
        if self.control.paused:
            self.action_resume()
            return
        self.control.pause()
        self.note("pause requested (after the current step)")
        self.refresh_bindings()

    def action_resume(self) -> None:
        if self.handle.running and self.control.paused:
            self.control.resume()
            self.note("resume requested")
            self.refresh_bindings()

    def action_quit_dashboard(self) -> None:
        if not self.handle.running:
            self.dismiss(self.exit_code)
            return
        if self.quit_when_done:
            self.notify("Still saving the resumable state; the dashboard closes when it is done.")
            return

        def answered(yes: bool | None) -> None:
            if yes and self.handle.running:
                self.stop_and_quit("quit from the dashboard")
            elif yes:
                self.dismiss(self.exit_code)

        self.app.push_screen(ConfirmScreen(
            "Training is running. Stop it, save a resumable state and quit?",
            yes="Stop and quit (y)", no="Keep training (n)"), answered)

    def stop_and_quit(self, reason: str) -> None:
        """Ask the engine to stop, show that we wait for the save, close when the worker ends."""
        self.quit_when_done = True
        self.control.request_stop(reason, save_state=True)
        self.note(f"{reason}: stopping, saving a resumable state", "warning")
        outcome = self.query_one("#outcome", Static)
        outcome.update(Text("Stopping: waiting for the engine to save a resumable state…\n"
                            "The dashboard closes by itself when the save is done.", style="bold"))
        outcome.set_classes("stopping")
        outcome.display = True


class WatchScreen(DashboardScreen):
    """The dashboard of a run started elsewhere: it follows ``events.jsonl`` and steers the run
    through ``RUN_DIR/control.json`` (engine/control_file.py), which its main process reads at
    every step, so x, s, n and p act as on the run's own dashboard."""

    title_prefix = "sdft watch"
    POLL_S = 0.25

    BINDINGS = STEERING

    def __init__(self, events_path, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.events_path = Path(events_path)
        self.run_dir = self.events_path.parent
        self.run_label = self.run_dir.name

    def on_mount(self) -> None:
        super().on_mount()
        self.follow()

    @work(thread=True, exit_on_error=False, group="follow", description="following events.jsonl")
    def follow(self) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        follower = EventFollower(self.events_path)
        while not worker.is_cancelled:
            for event in follower.poll():
                self.sink.emit(event)
            worker.cancelled_event.wait(self.POLL_S)

    def status_line(self) -> Text:
        line = super().status_line()
        if self.figures.version == 0:
            line = Text(f"{self.title_prefix} · {self.run_label} · waiting for {self.events_path}",
                        no_wrap=True, overflow="ellipsis")
        return line

    @property
    def live(self) -> bool:
        """The run is training (or preparing) and can take a request."""
        return self.figures.finished is None and self.figures.status in ("preparing", "running", "paused")

    def check_action(self, action: str, parameters):
        if action in ("stop", "save_now", "sample_now", "pause", "resume"):
            if not self.live:
                return False
            paused = self.figures.status == "paused"
            if (action == "pause" and paused) or (action == "resume" and not paused):
                return False
        return True

    def send(self, request: str, said: str) -> None:
        import os

        from engine.control_file import send_request

        try:
            send_request(self.run_dir, request, by=f"sdft watch (pid {os.getpid()})")
        except OSError as exc:
            self.notify(f"could not write {self.run_dir / 'control.json'}: {exc}", severity="error")
            return
        self.figures.note(f"{said} (the run acts at its next step)", "info")
        self.repaint()

    def action_stop(self) -> None:
        def answered(answer: str | None) -> None:
            if answer == "save_stop":
                self.send("save", "save requested")
            if answer in ("stop", "save_stop"):
                self.send("stop", "stop requested: the run saves a resumable state")

        self.app.push_screen(stop_question(), answered)

    def action_save_now(self) -> None:
        self.send("save", "save requested")

    def action_sample_now(self) -> None:
        self.send("sample", "sample requested")

    def action_pause(self) -> None:
        self.send("pause", "pause requested")

    def action_resume(self) -> None:
        self.send("resume", "resume requested")

    def config_file(self):
        path = self.run_dir / "config.toml"
        return path if path.is_file() else None

    def log_file(self):
        path = self.run_dir / "sdft.log"
        return path if path.exists() else None

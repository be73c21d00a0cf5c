"""The run dashboard: live loss, memory, throughput, samples and events; steering keys.

``RunScreen`` runs the engine in a Textual thread worker and steers it only through
``RunControl``; ``WatchScreen`` follows another process's ``events.jsonl`` read-only. Both feed
the same ``RunFigures`` and draw the same panes, so ``sdft watch`` shows what the live screen
shows. Events arrive through the bridge (coalesced messages); the panes repaint on a timer at a
few Hz, whatever the step rate.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Label, Static

from engine.control import RunControl
from engine.events import RunFinished
from sdft_tui.bridge import EngineEvents, EventFollower, MessageSink
from sdft_tui.run_figures import RunFigures, format_bytes, format_duration
from sdft_tui.widgets.event_log import EventLog
from sdft_tui.widgets.loss_chart import LossChart
from sdft_tui.widgets.sample_view import SampleView
from sdft_tui.widgets.throughput import Throughput
from sdft_tui.widgets.vram_meter import VramMeter

REPAINT_HZ = 4
EXIT_CODES = {"completed": 0, "failed": 3, "stopped": 130}

GENERIC_OOM_ADVICE = [
    "enable gradient checkpointing (memory.gradient_checkpointing = true)",
    "use 8-bit Adam (optimizer.type = \"AdamW8bit\")",
    "lower the batch size or resolution (general.batch_size / .resolution)",  # fits 80 columns
    "train in mixed precision (memory.mixed_precision = \"fp16\" or \"bf16\")",
]

Engine = Callable[..., Any]   # run_training(config_path, *, sink, control, log_path=None) -> RunResult


def exit_code_for(status: str | None) -> int:
    """0 completed, 3 failed, 130 stopped (like Ctrl+C in a shell)."""
    return EXIT_CODES.get(status or "failed", 3)


@dataclass
class EngineHandle:
    """What the UI, the worker thread and ``run_dashboard`` share about one engine run.

    It outlives the screen: after the app has closed (a lost terminal), ``run_dashboard`` still
    waits on ``done`` so the process never exits in the middle of a save.
    """

    control: RunControl = field(default_factory=RunControl)
    log_path: Path | None = None
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    result: Any = None
    error: str | None = None
    error_traceback: str | None = None

    @property
    def running(self) -> bool:
        return self.started and not self.done.is_set()

    @property
    def status(self) -> str | None:
        if not self.done.is_set():
            return None
        if self.error is not None:
            return "failed"
        return getattr(self.result, "status", None) or "completed"

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.status) if self.done.is_set() else exit_code_for("stopped")


class EngineDone(Message):
    """The engine call returned (or raised); ``handle`` holds the outcome."""


def default_engine() -> Engine:
    """The real trainer, imported only when a run starts (it pulls in torch)."""
    from engine.train.runner import run_training

    return run_training


def default_log_path(config_path) -> Path | None:
    """<run dir>/sdft.log (the trainer's default), when the run TOML can be read; the engine reports a broken TOML."""
    try:
        from engine.config.run_toml import load_run_config

        return Path(load_run_config(config_path).run_dir()) / "sdft.log"
    except Exception:  # noqa: BLE001 - the engine will fail with the real message
        return None


def oom_advice(config_path, figures: RunFigures, limit: int = 4) -> list[str]:
    """What to change after an out-of-memory error: the planner's suggestions for this config
    and this card when both are known, otherwise the usual remedies."""
    total = figures.last.vram_total if figures.last else None
    if not total:
        total = _cuda_total_memory()
    if total and config_path is not None:
        try:
            from engine.config.run_toml import load_run_config
            from engine.plan import suggest

            suggestions = suggest(load_run_config(config_path), total)
            lines = []
            for s in suggestions[:limit]:
                keys = ", ".join(f"{k} = {_toml_value(v)}" for k, v in s.config_changes.items())
                lines.append(s.text + (f"  [{keys}]" if keys else ""))
            if lines:
                return lines
        except Exception:  # noqa: BLE001 - advice is a courtesy; fall back to the generic list
            pass
    return list(GENERIC_OOM_ADVICE)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _cuda_total_memory() -> float | None:
    torch = sys.modules.get("torch")   # only if the engine already imported it
    try:
        if torch is not None and torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001
        pass
    return None


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question answered with y/n (or Enter/Escape): no mouse needed."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; max-width: 95%; height: auto; border: thick $warning; background: $panel; padding: 1 2;
    }
    ConfirmScreen Label { width: 100%; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align: center middle; }
    ConfirmScreen Button { margin: 0 1; min-width: 12; }
    """

    def __init__(self, question: str, yes: str = "Yes (y)", no: str = "No (n)") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button(self.yes, variant="warning", id="yes")
                yield Button(self.no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class DashboardScreen(Screen[int]):
    """The panes and the repaint loop; subclasses decide where the events come from."""

    CSS_PATH = "../styles/run.tcss"
    BINDINGS = [
        Binding("q", "quit_dashboard", "Quit"),
        Binding("l", "toggle_log", "Log scale"),
        Binding("w", "toggle_window", "Window"),
        Binding("left_square_bracket", "sample(-1)", "Prev sample", show=False),
        Binding("right_square_bracket", "sample(1)", "Next sample", show=False),
    ]
    title_prefix = "sdft"
    empty_samples_hint = "no samples yet"

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.figures = RunFigures()
        self.sink = MessageSink(self)
        self.painted_version = -1
        self.run_label = ""
        self.outcome_of: RunFinished | None = None   # the end the outcome panel shows

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="status-bar")
        with Grid(id="panes"):
            with Vertical(id="loss-pane", classes="pane"):
                yield LossChart(self.figures, id="loss-chart")
            with Vertical(id="side"):
                with Vertical(id="progress-pane", classes="pane"):
                    yield Throughput(self.figures, id="throughput")
                with Vertical(id="memory-pane", classes="pane"):
                    yield VramMeter(self.figures, id="vram")
            with Vertical(id="events-pane", classes="pane"):
                yield EventLog(self.figures, id="event-log")
            with Vertical(id="samples-pane", classes="pane"):
                yield SampleView(self.figures, id="samples", empty_hint=self.empty_samples_hint)
        yield Static(id="outcome")
        yield Footer()

    def on_mount(self) -> None:
        titles = {"loss-pane": "Loss", "progress-pane": "Progress", "memory-pane": "Memory",
                  "events-pane": "Events", "samples-pane": "Samples"}
        for pane_id, title in titles.items():
            self.query_one(f"#{pane_id}").border_title = title
        self.query_one("#outcome").display = False
        self.set_interval(1 / REPAINT_HZ, self.repaint)
        self.repaint(force=True)

    def on_unmount(self) -> None:
        self.sink.close()

    # ------------------------------------------------------------------ events in, pixels out

    def on_engine_events(self, message: EngineEvents) -> None:
        self.absorb(message.sink.drain())

    def absorb(self, events) -> None:
        """Apply events to the figures; the timer paints them (never per event)."""
        self.figures.apply_all(events)
        finished = self.figures.finished
        if finished is not self.outcome_of:
            self.outcome_of = finished
            if finished is not None:
                self.show_outcome()
            else:   # the run started again (``sdft watch`` across a resume)
                self.query_one("#outcome").display = False

    def repaint(self, force: bool = False) -> None:
        """Redraw the panes if anything changed since the last tick."""
        if not force and self.figures.version == self.painted_version:
            return
        self.painted_version = self.figures.version
        self.query_one("#status-bar", Static).update(self.status_line())
        for widget_id in ("#loss-chart", "#vram"):
            self.query_one(widget_id).refresh()
        # the progress pane shrinks once the run is over (Throughput.compact), giving the memory
        # pane the rows the outcome panel takes at 80x24
        self.query_one("#throughput").refresh(layout=self.figures.finished is not None)
        self.query_one("#event-log", EventLog).sync()
        self.query_one("#samples", SampleView).sync()
        self.refresh_bindings()

    def status_line(self) -> Text:
        f = self.figures
        status = self.display_status()
        style = {"completed": "bold green", "failed": "bold red", "stopped": "bold yellow",
                 "paused": "bold yellow", "stopping": "bold yellow"}.get(status, "bold")
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"{self.title_prefix} · {self.run_label} · ")
        line.append(status.upper(), style=style)
        if f.total_steps:
            line.append(f" · step {f.step}/{f.total_steps}")
        if f.newest_step is not None:
            epochs = f.started.total_epochs if f.started else 0
            line.append(f" · epoch {f.epoch}" + (f"/{epochs}" if epochs else ""))
            line.append(f" · elapsed {format_duration(f.elapsed_s)}")
            if f.running and f.last is not None:
                line.append(f" · ETA {format_duration(f.last.eta_s)}")
        if f.started is not None and self.fits(line, f" · {f.started.device}"):
            line.append(f" · {f.started.device}")   # also in the memory pane: the first to go at 80 columns
        return line

    def fits(self, line: Text, extra: str) -> bool:
        """Whether ``extra`` still fits on the status bar after ``line`` (True before layout)."""
        width = self.query_one("#status-bar").size.width - 2
        return width <= 0 or line.cell_len + len(extra) <= width

    def display_status(self) -> str:
        return self.figures.status

    # ------------------------------------------------------------------ outcome

    def show_outcome(self) -> None:
        outcome = self.query_one("#outcome", Static)
        text, css_class = self.outcome_text()
        outcome.update(text)
        outcome.set_classes(css_class)
        outcome.display = True

    def outcome_text(self) -> tuple[Text, str]:
        """What happened and what to do next, in as few lines as 80x24 allows (the panes above
        keep their room; q to close is in the footer)."""
        f = self.figures
        end = f.finished
        status = end.status if end else "failed"
        text = Text()
        if status == "completed":
            text.append("Training completed", style="bold")
            text.append(f" at step {end.step}.")
            if end.model_path:
                text.append(f"\nModel: {end.model_path}")
        elif status == "stopped":
            text.append("Training stopped", style="bold")
            text.append(f" at step {end.step}" + (f": {end.message}" if end.message else "") + ".")
            if end.model_path:
                text.append(f"\nModel: {end.model_path}")
            if end.state_path:
                config = self.resume_config()
                if config is not None:
                    text.append(f"\nResume: sdft train {config} --resume {end.state_path}")
                else:
                    text.append(f"\nResumable state: {end.state_path}")
        elif end is not None and end.out_of_memory:
            text.append("Out of GPU memory", style="bold")
            text.append(f" at step {end.step}" + (f": {end.message}" if end.message else "") + ".")
            peak = f.last.vram_peak if f.last else None
            if peak:
                text.append(f" Peak so far {format_bytes(peak)}.")
            text.append("\nTo fit, change in the run TOML (then resume or restart):")
            for line in oom_advice(self.config_file(), f):
                text.append(f"\n  • {line}")
            self.append_log_path(text)
        else:
            text.append("Training failed", style="bold")
            step = f" at step {end.step}" if end is not None else ""
            message = end.message if end is not None and end.message else "no message"
            text.append(f"{step}: {message}")
            self.append_log_path(text)
        return text, status if not (end and end.out_of_memory) else "failed"

    def resume_config(self):
        """The run file to name in the resume command (None: the state path alone is shown)."""
        return None

    def append_log_path(self, text: Text) -> None:
        path = self.log_file()
        text.append(f"\nLog: {path}" if path else "\nLog: none written (see the messages above)")

    def config_file(self):
        return None

    def log_file(self):
        return None

    # ------------------------------------------------------------------ keys

    def action_toggle_log(self) -> None:
        chart = self.query_one(LossChart)
        chart.log_scale = not chart.log_scale

    def action_toggle_window(self) -> None:
        chart = self.query_one(LossChart)
        chart.whole_run = not chart.whole_run

    def action_sample(self, delta: int) -> None:
        self.query_one(SampleView).step(delta)

    def action_quit_dashboard(self) -> None:
        self.dismiss(0)


class RunScreen(DashboardScreen):
    """Runs ``engine`` (the real trainer by default) in a thread worker and steers it."""

    empty_samples_hint = "no samples yet (n: sample now)"

    BINDINGS = [
        Binding("x", "stop", "Stop"),
        Binding("s", "save_now", "Save"),
        Binding("n", "sample_now", "Sample"),
        Binding("p", "pause", "Pause"),
        Binding("p", "resume", "Resume"),   # shown instead of Pause while paused (check_action)
        # inside the wizard the app's ctrl+q stands aside for this one (SdftApp.check_action)
        Binding("ctrl+q", "quit_dashboard", "Quit", show=False, priority=True),
    ]

    def __init__(self, config_path, *, engine: Engine | None = None, handle: EngineHandle | None = None,
                 log_path: Path | str | None = None, resume: str | None = None, allow_changed: bool = False,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        self.config_path = Path(config_path)
        self.engine = engine
        # sdft train's --resume / --allow-changed, passed on only when given
        self.engine_options = {k: v for k, v in (("resume", resume), ("allow_changed", allow_changed)) if v}
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

    def on_engine_done(self, _message: EngineDone) -> None:
        self.absorb(self.sink.drain())
        if self.figures.finished is None:
            # The engine ended without its RunFinished event (it raised, or is a minimal engine).
            h = self.handle
            status = h.status or "failed"
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
            if self.control.stop_requested and status not in ("stopping",):
                return "stopping"
            if self.control.paused and status == "running":
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

        def answered(yes: bool | None) -> None:
            if yes and self.handle.running:
                self.control.request_stop("stopped from the dashboard", save_state=True)
                self.note("stop requested: saving a resumable state", "warning")

        self.app.push_screen(ConfirmScreen(
            "Stop training now? A resumable state is saved first, so you can continue later."), answered)

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
    """Read-only dashboard following ``events.jsonl`` of a run started elsewhere."""

    title_prefix = "sdft watch"
    POLL_S = 0.25

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
        if self.fits(line, " · read-only"):   # at 80 columns the figures come first
            line.append(" · read-only", style="italic")
        return line

    def config_file(self):
        path = self.run_dir / "config.toml"
        return path if path.is_file() else None

    def log_file(self):
        path = self.run_dir / "sdft.log"
        return path if path.exists() else None

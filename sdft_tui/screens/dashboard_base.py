"""The dashboard's panes and repaint loop, shared by the live run and ``sdft watch``.

Events arrive through the bridge (coalesced messages) into one ``RunFigures``; the panes repaint
on a timer at a few Hz, whatever the step rate. Subclasses decide where the events come from.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.events import RunFinished
from engine.oom_advice import oom_advice
from engine.vocabulary import RunStatus
from sdft_tui.bridge import EngineEvents, MessageSink
from sdft_tui.engine_handle import cuda_total_memory
from sdft_tui.fit import fit_parts
from sdft_tui.run_figures import RunFigures, format_bytes, format_duration
from sdft_tui.widgets.event_log import EventLog
from sdft_tui.widgets.loss_chart import LossChart
from sdft_tui.widgets.sample_view import SampleView
from sdft_tui.widgets.throughput import Throughput
from sdft_tui.widgets.vram_meter import VramMeter

REPAINT_HZ = 4


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
        """The run's headline. What does not fit the bar goes whole, least needed first (the
        device, the "sdft" prefix, the epoch, the elapsed time: all shown in the panes too), so
        the status, the step and the ETA are never cut at 80 columns."""
        f = self.figures
        status = self.display_status()
        style = {"completed": "bold green", "failed": "bold red", "stopped": "bold yellow",
                 "paused": "bold yellow", "stopping": "bold yellow"}.get(status, "bold")
        parts: list[tuple[int, Text]] = [(2, Text(self.title_prefix)), (5, Text(self.run_label)),
                                         (9, Text(status.upper(), style=style))]
        if f.total_steps:
            parts.append((8, Text(f"step {f.step}/{f.total_steps}")))
        if f.newest_step is not None:
            epochs = f.started.total_epochs if f.started else 0
            parts.append((3, Text(f"epoch {f.epoch}" + (f"/{epochs}" if epochs else ""))))
            parts.append((4, Text(f"elapsed {format_duration(f.elapsed_s)}")))
            if f.running and f.eta_s is not None:
                parts.append((7, Text(f"ETA {format_duration(f.eta_s)}")))
        if f.started is not None:
            parts.append((1, Text(f.started.device)))
        return fit_parts(parts, self.query_one("#status-bar").size.width - 2)

    def display_status(self) -> str:
        return self.figures.status

    # ------------------------------------------------------------------ outcome

    def _step_of(self, path: str, end_step: int) -> str:
        """" (step N)" for a saved file, and whether it is older than the end: a model saved
        before a stop is not the model of the stop's step."""
        step = self.figures.saved_step(path)
        if step is None:
            return ""
        return f" (step {step}, before the stop at {end_step})" if step < end_step else f" (step {step})"

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
        status = end.status if end else RunStatus.FAILED
        text = Text()
        if status == RunStatus.COMPLETED:
            text.append("Training completed", style="bold")
            text.append(f" at step {end.step}.")
            if end.model_path:
                text.append(f"\nModel: {end.model_path}{self._step_of(end.model_path, end.step)}")
        elif status == RunStatus.STOPPED:
            text.append("Training stopped", style="bold")
            text.append(f" at step {end.step}" + (f": {end.message}" if end.message else "") + ".")
            if end.model_path:
                text.append(f"\nModel: {end.model_path}{self._step_of(end.model_path, end.step)}")
            if end.state_path:
                config = self.resume_config()
                if config is not None:   # a command to copy whole: the state's folder name holds its step
                    text.append(f"\nResume: sdft train {config} --resume {end.state_path}")
                else:
                    text.append(f"\nResumable state: {end.state_path}{self._step_of(end.state_path, end.step)}")
        elif end is not None and end.out_of_memory:
            text.append("Out of GPU memory", style="bold")
            text.append(f" at step {end.step}" + (f": {end.message}" if end.message else "") + ".")
            peak = f.last.vram_peak if f.last else None
            if peak:
                text.append(f" Peak so far {format_bytes(peak)}.")
            text.append("\nTo fit, change in the run TOML (then resume or restart):")
            total = (f.last.vram_total if f.last else None) or cuda_total_memory()
            for line in oom_advice(self.config_file(), total):
                text.append(f"\n  • {line}")
            self.append_log_path(text)
        else:
            text.append("Training failed", style="bold")
            step = f" at step {end.step}" if end is not None else ""
            message = end.message if end is not None and end.message else "no message"
            text.append(f"{step}: {message}")
            self.append_log_path(text)
        return text, status if not (end and end.out_of_memory) else RunStatus.FAILED

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

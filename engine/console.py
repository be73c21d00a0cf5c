"""Headless console output: Rich progress on a terminal, plain log lines in a pipe.

This is the only place the engine uses Rich. On a TTY a progress bar shows
step, loss, speed and the ETA, moving every step; otherwise one line per logging interval, so CI
logs and ``tee`` stay readable.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from engine.events import (
    Event,
    Message,
    ModelSaved,
    PhaseProgress,
    RunFinished,
    RunStarted,
    SampleGridSaved,
    SampleSaved,
    StepMetrics,
    StepProgress,
    ValidationMetrics,
)
from engine.units import counted, format_bytes, format_duration
from engine.vocabulary import RunStatus


class EtaColumn(TimeRemainingColumn):
    """The training bar's ETA from the engine's events, which carry one every step at the last
    logging interval's speed (Rich's own estimate saw only the logging steps and read -:--:--
    between them); the preparation phases keep Rich's estimate."""

    def render(self, task) -> Text:
        eta = task.fields.get("eta_s")
        if eta is None:
            return super().render(task)
        return Text(f"eta {format_duration(eta)}", style="progress.remaining")


def make_console(*, stderr: bool = False) -> Console:
    """A console that reads no markup: paths, keys, hints and captions print exactly as they
    are, brackets included. Style our own words with :func:`styled`."""
    return Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Literal text from pieces; a ``(text, style)`` piece gets that style. Never markup."""
    return Text.assemble(*parts)


def print_problems(problems, console: Console | None = None) -> None:
    """Each configuration problem on its own line, exactly as written: keys like
    ``[[datasets]]`` and paths like ``my [set1] images`` are never read as markup."""
    console = console or make_console(stderr=True)
    for p in problems:
        style = {"error": "bold red", "warning": "yellow"}.get(p.severity, "")
        where = f"{p.location()}: " if p.location() else ""
        subject = [(p.key, "bold"), ": "] if p.subject() else []   # no "<file>" placeholder
        console.print(styled(where, (p.severity, style), ": ", *subject, p.message))
        if p.hint:
            console.print(f"    hint: {p.hint}")


def step_line(e: StepMetrics) -> str:
    memory = f"vram {format_bytes(e.vram_peak)}" if e.vram_peak is not None else f"ram {format_bytes(e.ram_used)}"
    grad = f" grad {e.grad_norm:.3f}" if e.grad_norm is not None else ""
    return (f"step {e.step}/{e.total_steps} epoch {e.epoch} loss {e.loss:.4f} (avg {e.loss_avg:.4f}) "
            f"lr {e.lr:.2e}{grad} {e.it_per_s:.2f} it/s {e.samples_per_s:.2f} samples/s "
            f"eta {format_duration(e.eta_s)} {memory}")


class ConsoleSink:
    """Events to the terminal. It never gives up: if the live progress display fails, it is
    stopped and the sink goes on in plain lines, so the outcome line always gets out."""

    def __init__(self, console: Console | None = None, interactive: bool | None = None):
        self.console = console or make_console()
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.progress: Progress | None = None
        self.task = None
        self.phase_task = None
        self.phase_name: str | None = None

    def emit(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is None:
            return
        try:
            handler(event)
        except Exception as exc:  # noqa: BLE001 - a display problem must not silence the run
            if not self.interactive:
                raise
            self._fall_back_to_lines(exc)
            handler(event)

    def _fall_back_to_lines(self, exc: Exception) -> None:
        try:
            if self.progress is not None:
                self.progress.stop()
        except Exception:  # noqa: BLE001 - the display is already broken; plain lines follow
            pass
        self.progress, self.task, self.phase_task, self.phase_name = None, None, None, None
        self.interactive = False
        self.console.print(f"(progress display failed: {exc!r}; continuing with plain lines)")

    def print(self, text: str, style: str | None = None) -> None:
        target = self.progress.console if self.progress else self.console
        target.print(text, style=style, highlight=False, markup=False)

    def _on_message(self, e: Message) -> None:
        style = {"warning": "yellow", "error": "bold red"}.get(e.level)
        prefix = {"warning": "warning: ", "error": "error: "}.get(e.level, "")
        self.print(prefix + e.text, style)

    def _on_phase(self, e: PhaseProgress) -> None:
        if not self.interactive:
            if e.done == e.total:
                self.print(f"{e.name}: done ({e.total})")
            return
        progress = self._ensure_progress()
        if self.phase_name != e.name:
            # Task ids are not list positions: keep our own id and name, never index progress.tasks.
            if self.phase_task is not None:
                progress.remove_task(self.phase_task)
            self.phase_task = progress.add_task(e.name, total=max(e.total, 1), info="")
            self.phase_name = e.name
        progress.update(self.phase_task, completed=e.done, total=max(e.total, 1))
        if e.done >= e.total:
            progress.remove_task(self.phase_task)
            self.phase_task, self.phase_name = None, None

    def _on_run_started(self, e: RunStarted) -> None:
        self.print(f"training {e.num_images} images on {e.where}, {e.batch_words}: {e.total_steps} steps, "
                   f"{e.total_epochs} epochs ({e.steps_per_epoch} steps/epoch) -> {e.run_dir}", "bold")
        if self.interactive:
            progress = self._ensure_progress()
            self.task = progress.add_task("training", total=e.total_steps, completed=e.start_step, info="",
                                          eta_s=None)

    def _on_step(self, e: StepMetrics) -> None:
        if self.interactive and self.progress is not None and self.task is not None:
            info = f"loss {e.loss_avg:.4f} {e.it_per_s:.2f} it/s"
            self.progress.update(self.task, completed=e.step, info=info, eta_s=e.eta_s)
        else:
            self.print(step_line(e))

    def _on_progress(self, e: StepProgress) -> None:
        """The bar and its ETA move every step; plain lines stay one per logging interval."""
        if self.interactive and self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=e.step, eta_s=e.eta_s)

    def _on_saved(self, e: ModelSaved) -> None:
        self.print(f"saved {e.what} at step {e.step}: {e.path}", "green")

    def _on_sample(self, e: SampleSaved) -> None:
        self.print(f"sample at step {e.step}: {e.path}")

    def _on_validation(self, e: ValidationMetrics) -> None:
        figures = ", ".join(f"{name} {value:.4f}" for name, value in sorted(e.figures.items()))
        self.print(f"validation at step {e.step}: {figures}", "cyan")

    def _on_sample_grid(self, e: SampleGridSaved) -> None:
        self.print(f"sample grid at step {e.step} ({counted(e.count, 'prompt')}): {e.path}")

    def _on_run_finished(self, e: RunFinished) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if e.status == RunStatus.COMPLETED:
            self.console.print(styled(("done", "bold green"), f" at step {e.step}. Model: {e.model_path}"))
        elif e.status == RunStatus.STOPPED:
            self.console.print(styled(("stopped", "yellow"), f" at step {e.step}. State: {e.state_path or '-'}"))
        else:
            self.console.print(styled(("training failed:", "bold red"), f" {e.message}"))

    def _ensure_progress(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}", markup=False), EtaColumn(), console=self.console,
                transient=False,
            )
            self.progress.start()
        return self.progress

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()

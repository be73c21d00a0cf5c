"""RunFigures: what the dashboard shows, computed from the engine's event stream alone.

No widgets here. The live run screen and ``sdft watch`` feed the same events (one through the
bridge, the other by reading ``events.jsonl``) into this class, so both show the same figures by
construction. Times in the log are offsets from the first event, taken from the events' own
timestamps: a replayed file reads exactly like the live run did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.events import (
    Event,
    Message,
    ModelSaved,
    PhaseProgress,
    RunFinished,
    RunStarted,
    SampleGridSaved,
    SampleSaved,
    StatusChanged,
    StepMetrics,
    StepProgress,
    ValidationMetrics,
)
from engine.units import format_bytes, format_duration, format_number  # noqa: F401 - re-exported
from engine.vocabulary import RunStatus, phase_label

# Weight of the exponential moving average drawn over the raw loss. Diffusion loss is very
# noisy (it depends on the random timestep), so the trend needs a strong smoothing; the average
# is debiased so the first points are not pulled towards zero.
EMA_WEIGHT = 0.95


@dataclass(frozen=True)
class Picture:
    """One image the samples pane can show: a prompt's sample or a sampling point's grid."""

    path: str
    step: int
    caption: str


@dataclass(frozen=True)
class LogLine:
    offset_s: float      # seconds since the first event of the run
    level: str           # "info" | "warning" | "error" | "success"
    text: str

    def render(self) -> str:
        return f"{format_offset(self.offset_s)} {self.text}"


class RunFigures:
    """Accumulates events; ``version`` increases on every change so painters know when to redraw."""

    def __init__(self) -> None:
        self.version = 0
        self.started: RunStarted | None = None
        self.finished: RunFinished | None = None
        self.status = "waiting"          # waiting, preparing, running, paused, stopping, + finished statuses
        self.phase: PhaseProgress | None = None
        self.last: StepMetrics | None = None
        self.progress: StepProgress | None = None   # the newest step, between the intervals' figures
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.smooth: list[float] = []
        self.lr: list[float] = []
        self.samples: list[SampleSaved] = []
        self.grids: list[SampleGridSaved] = []
        self.pictures: list[Picture] = []           # samples and grids in the order they came
        self.validation_steps: list[int] = []
        self.validation_loss: list[float] = []
        self.saves: list[ModelSaved] = []
        self.log: list[LogLine] = []
        self._t0: float | None = None
        self.last_time: float | None = None   # engine clock of the newest event
        self._ema = 0.0
        self._ema_n = 0
        self._phase_logged: set[str] = set()
        self.earlier_s = 0.0   # training time of the earlier starts in this log (a resumed run)

    # ------------------------------------------------------------------ feeding

    def apply_all(self, events) -> None:
        for event in events:
            self.apply(event)

    def apply(self, event: Event) -> None:
        if self._t0 is None:
            self._t0 = event.time
        if self.finished is not None and not isinstance(event, RunFinished):
            # Nothing follows a run's end but a new start in the same folder (a resume).
            self.finished = None
            self.status = "preparing"
        self.last_time = event.time
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)
            self.version += 1

    def carry_over(self, events) -> None:
        """A resumed run's earlier starts (its events.jsonl): their loss points and training time
        go on in this run's figures, which are preparing again (no outcome of the earlier stop)."""
        self.apply_all(events)
        self.finished = None
        self.status = "preparing" if self.started is not None else "waiting"
        self.version += 1

    def note(self, text: str, level: str = "info") -> None:
        """A line from the UI itself (key presses), stamped with the newest event's time so the
        log reads in order whatever the clocks of the two machines say."""
        offset = 0.0 if self._t0 is None or self.last_time is None else self.last_time - self._t0
        self.log.append(LogLine(max(0.0, offset), level, text))
        self.version += 1

    def _log(self, event: Event, text: str, level: str = "info") -> None:
        self.log.append(LogLine(max(0.0, event.time - (self._t0 or event.time)), level, text))

    def _on_started(self, e: RunStarted) -> None:
        if self.started is not None:
            self.earlier_s += self.elapsed_this_start_s or 0.0
            self._forget_after(e.start_step)
        self.started = e
        self.phase = None   # the preparation phases come before the start: none is current now
        self.status = "running" if self.status in ("waiting", "preparing") else self.status
        resumed = f", resumed at step {e.start_step}" if e.start_step else ""
        self._log(e, f"started on {e.where}: {e.num_images} images, {e.batch_words}, "
                     f"{e.total_steps} steps in {e.total_epochs} epochs{resumed}")

    def _on_message(self, e: Message) -> None:
        self._log(e, e.text, e.level if e.level in ("warning", "error") else "info")

    def _on_phase(self, e: PhaseProgress) -> None:
        self.phase = e
        if self.started is None and self.status == "waiting":
            self.status = "preparing"
        label = phase_label(e.name)
        if e.total and e.done >= e.total and e.name not in self._phase_logged:
            self._phase_logged.add(e.name)
            self._log(e, f"{label}: done ({e.total})")
        elif e.done < (e.total or 1):
            self._phase_logged.discard(e.name)

    def _on_step(self, e: StepMetrics) -> None:
        self.last = e
        self.phase = None if self.phase and self.phase.done >= self.phase.total else self.phase
        if self.status in ("waiting", "preparing"):
            self.status = "running"
        self.steps.append(e.step)
        self.loss.append(e.loss)
        self.lr.append(e.lr)
        self.smooth.append(self._smoothed(e.loss))

    def _smoothed(self, loss: float) -> float:
        if math.isfinite(loss):
            self._ema = EMA_WEIGHT * self._ema + (1 - EMA_WEIGHT) * loss
            self._ema_n += 1
        debias = 1 - EMA_WEIGHT ** self._ema_n if self._ema_n else 1.0
        return self._ema / debias if self._ema_n else loss

    def _on_progress(self, e: StepProgress) -> None:
        self.progress = e
        self.phase = None
        if self.status in ("waiting", "preparing"):
            self.status = "running"

    def _forget_after(self, step: int) -> None:
        """A new start at ``step`` (a resume, or 0 for a fresh run): later points are replaced."""
        keep = sum(1 for s in self.steps if s <= step)
        for series in (self.steps, self.loss, self.smooth, self.lr):
            del series[keep:]
        keep = sum(1 for s in self.validation_steps if s <= step)
        del self.validation_steps[keep:], self.validation_loss[keep:]
        if self.last is not None and self.last.step > step:
            self.last = None
        if self.progress is not None and self.progress.step > step:
            self.progress = None
        self._ema, self._ema_n = 0.0, 0
        self.smooth[:] = [self._smoothed(loss) for loss in self.loss]

    def saved_step(self, path: str) -> int | None:
        """The step a saved model or state was written at (its ``saved`` event), or None."""
        return next((e.step for e in reversed(self.saves) if e.path == path), None)

    def _on_saved(self, e: ModelSaved) -> None:
        self.saves.append(e)
        what = "resumable state" if e.what == "state" else "model"
        self._log(e, f"saved {what} at step {e.step}: {e.path}", "success")

    def _on_sample(self, e: SampleSaved) -> None:
        self.samples.append(e)
        self.pictures.append(Picture(e.path, e.step, e.prompt))
        self._log(e, f"sample at step {e.step}: {e.prompt}")

    def _on_sample_grid(self, e: SampleGridSaved) -> None:
        self.grids.append(e)
        self.pictures.append(Picture(e.path, e.step, f"grid of the {e.count} prompts" if e.count != 1 else "grid of the prompt"))
        self._log(e, f"sample grid at step {e.step}: {e.path}")

    def _on_validation(self, e: ValidationMetrics) -> None:
        loss = e.figures.get("loss")
        if loss is None:
            return
        self.validation_steps.append(e.step)
        self.validation_loss.append(loss)
        self._log(e, f"validation loss at step {e.step}: {format_number(loss)}")

    @property
    def validation(self) -> tuple[int, float] | None:
        """The newest validation loss and its step, None before the first."""
        return (self.validation_steps[-1], self.validation_loss[-1]) if self.validation_loss else None

    def _on_status(self, e: StatusChanged) -> None:
        if self.finished is None:
            self.status = e.status
        self._log(e, f"status: {e.status}")

    def _on_finished(self, e: RunFinished) -> None:
        self.finished = e
        self.status = e.status
        self.phase = None
        level = {RunStatus.COMPLETED: "success", RunStatus.FAILED: "error"}.get(e.status, "warning")
        text = f"run {e.status} at step {e.step}"
        if e.message:
            text += f": {e.message}"
        self._log(e, text, level)

    # ------------------------------------------------------------------ reading

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def step(self) -> int:
        """The newest step: the run's end, else the last step event of either kind."""
        if self.finished is not None and self.finished.step:
            return self.finished.step   # a stop lands between two intervals' figures
        newest = self.newest_step
        if newest is not None:
            return newest.step
        return self.started.start_step if self.started else 0

    @property
    def newest_step(self) -> StepMetrics | StepProgress | None:
        """The newest step event of this start (figures or progress), None before the first step."""
        return max((e for e in (self.last, self.progress) if e is not None), key=lambda e: e.step, default=None)

    @property
    def elapsed_this_start_s(self) -> float | None:
        """Training time of this start, as of the newest step."""
        newest = self.newest_step
        return newest.elapsed_s if newest is not None else None

    @property
    def elapsed_s(self) -> float | None:
        """Training time of the whole run: every start in the log (a resume goes on counting), as
        of the newest step."""
        this = self.elapsed_this_start_s
        if this is None:
            return self.earlier_s or None
        return self.earlier_s + this

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from the newest step event: progress events carry their own ETA, so it
        moves every step (older logs' progress has none: the last figures' then)."""
        newest = self.newest_step
        if isinstance(newest, StepProgress) and newest.eta_s is not None:
            return newest.eta_s
        return self.last.eta_s if self.last is not None else None

    @property
    def epoch(self) -> int:
        newest = self.newest_step
        return newest.epoch if newest is not None else 0

    @property
    def total_steps(self) -> int:
        if self.last is not None:
            return self.last.total_steps
        return self.started.total_steps if self.started else 0

    def summary(self) -> dict:
        """The headline figures (tests compare the live screen with ``sdft watch`` through this)."""
        m = self.last
        return {
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "elapsed_s": self.elapsed_s,
            "loss": m.loss if m else None,
            "loss_avg": m.loss_avg if m else None,
            "smoothed": self.smooth[-1] if self.smooth else None,
            "lr": m.lr if m else None,
            "it_per_s": m.it_per_s if m else None,
            "samples_per_s": m.samples_per_s if m else None,
            "eta_s": m.eta_s if m else None,
            "vram_peak": m.vram_peak if m else None,
            "points": len(self.loss),
            "samples": [s.path for s in self.samples],
            "grids": [g.path for g in self.grids],
            "validation_loss": self.validation_loss[-1] if self.validation_loss else None,
            "saves": [s.path for s in self.saves],
        }


_HANDLERS = {
    RunStarted: RunFigures._on_started,
    Message: RunFigures._on_message,
    PhaseProgress: RunFigures._on_phase,
    StepMetrics: RunFigures._on_step,
    StepProgress: RunFigures._on_progress,
    ModelSaved: RunFigures._on_saved,
    SampleSaved: RunFigures._on_sample,
    SampleGridSaved: RunFigures._on_sample_grid,
    ValidationMetrics: RunFigures._on_validation,
    StatusChanged: RunFigures._on_status,
    RunFinished: RunFigures._on_finished,
}


# ---------------------------------------------------------------------- formatting helpers
# format_duration, format_bytes and format_number live in engine.units (shared with the console).


def format_offset(seconds: float) -> str:
    """+MM:SS, or +H:MM:SS past an hour (runs last hours)."""
    s = int(max(0, seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"+{h}:{m:02d}:{sec:02d}" if h else f"+{m:02d}:{sec:02d}"



"""A scripted stand-in for engine.runner.run_training, for the dashboard tests.

It behaves like the real loop where the dashboard can tell: runs on the calling thread (the TUI's
worker), emits the same event kinds with fixed timestamps and figures (snapshots stay stable),
polls RunControl at step boundaries (stop with a saved state, save now, sample now, pause), and
can hold at a step until the test releases it, so keys can be pressed mid-run. Its phases and
statuses are the engine's own words (engine.vocabulary), so the dashboard is tested in the
dialect the real trainer speaks.
"""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.events import (
    FanOut,
    JsonlSink,
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
from engine.vocabulary import ControlStatus, Phase, RunStatus

T0 = 1_700_000_000.0   # fixed clock: the log shows offsets from here
GIB = 2**30


@dataclass
class FakeResult:
    status: str
    model_path: str | None = None
    state_path: str | None = None
    run_dir: str = ""
    message: str = ""


def loss_at(step: int) -> float:
    """A decreasing, noisy-looking but deterministic loss."""
    return 0.05 + 0.1 * math.exp(-step / 40) + 0.03 * abs(math.sin(step * 1.7))


class FakeEngine:
    """Call signature of run_training. ``ending``: "complete", "fail", "raise", "oom"."""

    def __init__(self, run_dir: str | Path, *, total_steps: int = 40, ending: str = "complete",
                 hold_at: int | None = None, fail_at: int | None = None, cuda: bool = True,
                 sample_every: int = 20, write_events: bool = True, slow_save: bool = False,
                 validate_every: int | None = None, log_every: int = 1, start_step: int = 0):
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.ending = ending
        self.hold_at = hold_at
        self.fail_at = fail_at if fail_at is not None else total_steps // 2
        self.cuda = cuda
        self.sample_every = sample_every
        self.validate_every = validate_every
        self.log_every = log_every            # figures as the trainer logs them: step 1, every N, the last
        self.start_step = start_step          # a resume's: the loop goes on after it
        self.write_events = write_events
        self.slow_save = slow_save              # hold the stop's state save until ``save_gate``
        self.save_gate = threading.Event()
        self.saving = threading.Event()
        self.held = threading.Event()       # set when the loop reaches hold_at (it holds at every
                                            # step from there on until ``release``)
        self.release = threading.Event()    # the test sets it to let the loop go on
        self.finished = threading.Event()
        self.calls: list[dict] = []
        self.thread_names: list[str] = []
        self.seen: list[str] = []           # control requests the loop noticed

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def __call__(self, config_path, *, sink, control, log_path=None, **options):
        self.calls.append({"config_path": str(config_path), "log_path": log_path, **options})
        self.thread_names.append(threading.current_thread().name)
        jsonl = JsonlSink(self.events_path) if self.write_events else None
        out = FanOut([sink] + ([jsonl] if jsonl else []))
        try:
            return self._run(out, control)
        finally:
            if jsonl:
                jsonl.close()
            self.finished.set()

    def _t(self, step: int, extra: float = 0.0) -> float:
        return T0 + 5.0 + step * 0.5 + extra

    def _metrics(self, step: int) -> StepMetrics:
        loss = loss_at(step)
        vram = dict(vram_allocated=3.2 * GIB + step * 1e6, vram_reserved=4.0 * GIB, vram_peak=5.5 * GIB,
                    vram_total=8.0 * GIB) if self.cuda else dict(ram_used=2.5 * GIB)
        return StepMetrics(step=step, total_steps=self.total_steps, epoch=1 + (step - 1) // 10, loss=loss,
                           loss_avg=round(loss * 1.1, 6), lr=1e-4 * min(1.0, step / 10), grad_norm=1.0,
                           it_per_s=2.0, samples_per_s=8.0, eta_s=(self.total_steps - step) * 0.5,
                           elapsed_s=step * 0.5, time=self._t(step), **vram)

    def _run(self, sink, control) -> FakeResult:
        rd = str(self.run_dir)
        sink.emit(PhaseProgress(name=Phase.LOADING_MODEL, done=1, total=1, time=T0 + 1))
        for done in (0, 8, 16):
            sink.emit(PhaseProgress(name=Phase.CACHING_LATENTS, done=done, total=16, time=T0 + 2 + done / 8))
        sink.emit(RunStarted(run_dir=rd, total_steps=self.total_steps, total_epochs=self.total_steps // 10,
                             steps_per_epoch=10, num_images=16, batch_size=4,
                             device="cuda:0" if self.cuda else "cpu", model="tiny-sd1", start_step=self.start_step,
                             time=T0 + 5))
        sink.emit(Message(level="warning", text="xformers not installed: using SDPA attention", time=T0 + 5))
        step = 0
        for step in range(self.start_step + 1, self.total_steps + 1):
            if control.stop_requested:
                return self._stopped(sink, control, step - 1)
            if control.paused:
                self.seen.append("pause")
                sink.emit(StatusChanged(status=ControlStatus.PAUSED, time=self._t(step)))
                control.wait_while_paused()
                sink.emit(StatusChanged(status=ControlStatus.RUNNING, time=self._t(step)))
                if control.stop_requested:
                    return self._stopped(sink, control, step - 1)
            if step % self.log_every == 0 or step in (1, self.total_steps):
                sink.emit(self._metrics(step))
            else:
                sink.emit(StepProgress(step=step, total_steps=self.total_steps, epoch=1 + (step - 1) // 10,
                                       elapsed_s=step * 0.5, eta_s=(self.total_steps - step) * 0.5, time=self._t(step)))
            if control.take_save_request():
                self.seen.append("save")
                sink.emit(ModelSaved(path=f"{rd}/checkpoints/step-{step}.safetensors", what="model", step=step,
                                     epoch=1, time=self._t(step, 0.1)))
            if control.take_sample_request() or step % self.sample_every == 0:
                self.seen.append("sample")
                sink.emit(SampleSaved(path=f"{rd}/samples/step-{step:06d}-0.png", prompt="a photo of a cat",
                                      step=step, time=self._t(step, 0.2)))
                sink.emit(SampleGridSaved(path=f"{rd}/samples/t_s{step:08d}_grid.png", step=step, count=1,
                                          time=self._t(step, 0.25)))
            if self.validate_every and step % self.validate_every == 0:
                sink.emit(ValidationMetrics(step=step, epoch=1 + (step - 1) // 10,
                                            figures={"loss": round(loss_at(step) * 1.2, 6)}, time=self._t(step, 0.3)))
            if self.ending in ("fail", "raise", "oom") and step == self.fail_at:
                return self._fail(sink, step)
            if self.hold_at is not None and step >= self.hold_at and not self.release.is_set():
                self.held.set()
                while not (self.release.wait(0.01) or control.stop_requested or control.paused):
                    pass   # a pause or stop is taken at the next step boundary
        model = f"{rd}/checkpoints/final.safetensors"
        sink.emit(ModelSaved(path=model, what="model", step=step, epoch=self.total_steps // 10,
                             time=self._t(step, 0.3)))
        sink.emit(RunFinished(status=RunStatus.COMPLETED, step=step, epoch=self.total_steps // 10, model_path=model,
                              time=self._t(step, 0.4)))
        return FakeResult("completed", model_path=model, run_dir=rd)

    def _stopped(self, sink, control, step: int) -> FakeResult:
        self.seen.append("stop")
        rd = str(self.run_dir)
        sink.emit(StatusChanged(status=ControlStatus.STOPPING, time=self._t(step, 0.1)))
        self.saving.set()
        if self.slow_save:
            self.save_gate.wait(30)
        state = f"{rd}/state/step-{step}"
        sink.emit(ModelSaved(path=state, what="state", step=step, epoch=1, time=self._t(step, 0.2)))
        sink.emit(RunFinished(status=RunStatus.STOPPED, step=step, epoch=1, message=control.stop_reason,
                              state_path=state, time=self._t(step, 0.3)))
        return FakeResult("stopped", state_path=state, run_dir=rd, message=control.stop_reason)

    def _fail(self, sink, step: int) -> FakeResult:
        if self.ending == "raise":
            raise RuntimeError("NaN loss at step %d: lower the learning rate" % step)
        oom = self.ending == "oom"
        message = ("CUDA out of memory. Tried to allocate 2.00 GiB" if oom
                   else "caption file unreadable: data/cat.txt")
        sink.emit(RunFinished(status=RunStatus.FAILED, step=step, epoch=1, message=message, out_of_memory=oom,
                              time=self._t(step, 0.1)))
        return FakeResult("failed", run_dir=str(self.run_dir), message=message)


def screen_text(app) -> str:
    """The current screen as plain text (what a user reads), for assertions and debugging."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


# ---------------------------------------------------------------------- driving the app under Pilot


async def wait_until(pilot, condition, timeout: float = 20.0) -> None:
    """Let the app process messages until ``condition()`` holds (a safety limit, not a timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await pilot.pause(0.02)


async def wait_thread_event(event: threading.Event, timeout: float = 20.0) -> None:
    assert await asyncio.to_thread(event.wait, timeout), "the engine thread did not get there"


async def settle(pilot, screen) -> None:
    await pilot.pause()
    await pilot.pause()
    screen.repaint(force=True)
    await pilot.pause()


def run_app(engine, scenario, *, size=(80, 24), config="run.toml", **options):
    """Run a DashboardApp on a RunScreen driven by ``engine``; ``scenario(app, pilot, screen)``.
    ``options``: the RunScreen's (``resume``, ...)."""
    from sdft_tui.dashboard import DashboardApp
    from sdft_tui.engine_handle import EngineHandle
    from sdft_tui.screens.run import RunScreen

    handle = EngineHandle()
    app = DashboardApp(lambda: RunScreen(config, engine=engine, handle=handle, **options))

    async def main():
        async with app.run_test(size=size) as pilot:
            await scenario(app, pilot, app.dashboard)
    asyncio.run(main())
    return app, handle

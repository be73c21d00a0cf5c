"""Live figures: the header's step and elapsed time move every step, a stop shows the step it
stopped at, and ``sdft watch`` follows a stopped run that is resumed as running again."""

from __future__ import annotations

import asyncio

from dashboard_helpers import T0, screen_text, settle, wait_until

from engine.events import (
    JsonlSink,
    ModelSaved,
    PhaseProgress,
    RunFinished,
    RunStarted,
    StatusChanged,
    StepMetrics,
    StepProgress,
)
from engine.vocabulary import Phase
from sdft_tui.dashboard import DashboardApp
from sdft_tui.run_figures import RunFigures
from sdft_tui.screens.run import WatchScreen

TOTAL = 400


def started(start_step: int = 0, at: float = 0.0) -> RunStarted:
    return RunStarted(run_dir="/runs/r", total_steps=TOTAL, total_epochs=40, steps_per_epoch=10, num_images=16,
                      batch_size=4, device="cpu", start_step=start_step, time=T0 + at)


def metrics(step: int, loss: float = 0.1, at: float = 0.0) -> StepMetrics:
    return StepMetrics(step=step, total_steps=TOTAL, epoch=1 + (step - 1) // 10, loss=loss, loss_avg=loss, lr=1e-4,
                       grad_norm=None, it_per_s=1.0, samples_per_s=4.0, eta_s=float(TOTAL - step),
                       elapsed_s=float(step), time=T0 + at + step)


def progress(step: int, elapsed: float | None = None) -> StepProgress:
    return StepProgress(step=step, total_steps=TOTAL, epoch=1 + (step - 1) // 10,
                        elapsed_s=float(step) if elapsed is None else elapsed, time=T0 + step)


def header(app) -> str:
    return screen_text(app).splitlines()[0]


def test_step_and_elapsed_follow_progress_between_the_intervals_figures():
    f = RunFigures()
    f.apply_all([started(), metrics(10), progress(11), progress(12)])
    assert (f.step, f.elapsed_s, f.epoch) == (12, 12.0, 2)
    assert f.steps == [10]                     # progress moves the counters, not the loss chart
    f.apply(RunFinished(status="stopped", step=13, epoch=2, time=T0 + 13))
    assert f.step == 13                        # the stop lands between two intervals


def test_a_resume_from_an_earlier_state_replaces_the_later_points():
    f = RunFigures()
    f.apply_all([started(), *[metrics(s, loss=s / 100) for s in range(1, 19)],
                 RunFinished(status="stopped", step=18, epoch=2, time=T0 + 19)])
    f.apply_all([PhaseProgress(name=Phase.LOADING_MODEL, done=0, total=1, time=T0 + 30)])
    assert f.running and f.finished is None and f.status == "preparing"
    f.apply_all([started(start_step=10, at=31), metrics(11, loss=0.5)])
    assert f.status == "running" and f.steps == list(range(1, 12)) and f.loss[-1] == 0.5
    fresh = RunFigures()
    fresh.apply_all([started(), *[metrics(s, loss=s / 100) for s in range(1, 11)], metrics(11, loss=0.5)])
    assert f.smooth == fresh.smooth            # the smoothed curve is rebuilt from the kept points


def test_watch_header_moves_every_step_stops_at_the_real_step_and_follows_the_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    events = run_dir / "events.jsonl"
    app = DashboardApp(lambda: WatchScreen(events))
    seen = {}

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.dashboard
            sink = JsonlSink(events)
            sink.emit(started())
            sink.emit(StatusChanged(status="running", time=T0))
            sink.emit(metrics(10))
            await wait_until(pilot, lambda: screen.figures.step == 10)
            await settle(pilot, screen)
            seen["at 10"] = header(app)
            for step in range(11, 19):
                sink.emit(progress(step))
                await wait_until(pilot, lambda step=step: screen.figures.step == step)
            await settle(pilot, screen)
            seen["at 18"] = header(app)
            sink.emit(StatusChanged(status="stopping", time=T0 + 18.1))
            sink.emit(ModelSaved(path="/runs/r/state/s18", what="state", step=18, epoch=2, time=T0 + 18.2))
            sink.emit(RunFinished(status="stopped", step=18, epoch=2, state_path="/runs/r/state/s18",
                                  time=T0 + 18.3))
            await wait_until(pilot, lambda: screen.figures.finished is not None)
            await settle(pilot, screen)
            seen["stopped"] = header(app)
            seen["stopped outcome"] = screen.query_one("#outcome").display
            # `sdft train RUN.toml --resume latest` appends to the same events.jsonl
            sink.emit(PhaseProgress(name=Phase.LOADING_MODEL, done=0, total=1, time=T0 + 60))
            sink.emit(started(start_step=18, at=61))
            sink.emit(StatusChanged(status="running", time=T0 + 61))
            sink.emit(progress(19, elapsed=3.0))   # 3 s into the resumed start
            await wait_until(pilot, lambda: screen.figures.step == 19)
            await settle(pilot, screen)
            seen["resumed"] = header(app)
            seen["resumed outcome"] = screen.query_one("#outcome").display
            seen["running"] = screen.figures.running
            sink.close()
            await pilot.press("q")

    asyncio.run(main())
    assert "RUNNING · step 10/400" in seen["at 10"] and "elapsed 10s" in seen["at 10"]
    assert "RUNNING · step 18/400" in seen["at 18"] and "elapsed 18s" in seen["at 18"]
    assert "STOPPED · step 18/400" in seen["stopped"] and seen["stopped outcome"]
    assert "RUNNING · step 19/400" in seen["resumed"], seen["resumed"]
    assert "elapsed 21s" in seen["resumed"], seen["resumed"]   # the 18 s before the resume go on counting
    assert seen["running"] and not seen["resumed outcome"]


def test_follower_starts_over_when_a_fresh_run_replaces_the_file(tmp_path):
    from sdft_tui.bridge import EventFollower

    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    for step in range(1, 4):
        sink.emit(metrics(step))
    sink.close()
    follower = EventFollower(path)
    assert [e.step for e in follower.poll()] == [1, 2, 3]
    path.unlink()                                  # a fresh run deletes the old log and starts a new one
    sink = JsonlSink(path)
    for step in range(1, 9):                       # longer than the old file before the next poll
        sink.emit(metrics(step, at=100.0))
    sink.close()
    assert [e.step for e in follower.poll()] == list(range(1, 9)) and follower.restarted

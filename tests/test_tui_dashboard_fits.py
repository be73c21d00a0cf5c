"""The dashboard at 80x24 from the first step to hours into a run: the panes show the step
being trained (not a preparation phase that ended), the loss from step 1, and every value whole.

Found in tmux at 80x24: the Progress pane said "caching latents" at step 5 and the Loss pane
"waiting for the first logged step" until step 10, because both read only the interval's figures;
the status bar and the ETA row cut "ETA 21h49m" and "elapsed 3h3…" on a long run.
"""

from __future__ import annotations

from dataclasses import replace

from dashboard_helpers import GIB, T0, FakeEngine, loss_at, run_app, screen_text, settle, wait_until
from rich.text import Text

from engine.events import PhaseProgress, RunStarted, StepProgress
from engine.vocabulary import Phase
from sdft_tui.fit import fit_parts
from sdft_tui.run_figures import RunFigures, format_number


def pane(text: str, title: str) -> str:
    """The lines of the pane whose border carries ``title`` (its column range), joined."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if f"─ {title} " in line)
    left = lines[top].index(f"─ {title} ") - 1
    right = lines[top].index("╮", left)
    out = []
    for line in lines[top + 1:]:
        if line[left] == "╰":
            break
        out.append(line[left + 1:right].strip(" │"))
    return "\n".join(out)


def test_step_five_shows_the_step_and_the_loss_of_step_one(tmp_path):
    # figures every 10 steps as the trainer logs them (and at step 1), progress events between
    engine = FakeEngine(tmp_path / "run", total_steps=40, hold_at=5, log_every=10, sample_every=10_000)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: engine.held.is_set() and screen.figures.step == 5)
        await settle(pilot, screen)
        out["text"] = screen_text(app)
        engine.release.set()
        await wait_until(pilot, lambda: screen.handle.done.is_set())
        await pilot.press("q")

    run_app(engine, scenario)
    text = out["text"]
    progress, loss = pane(text, "Progress"), pane(text, "Loss")
    assert "caching latents" not in progress and "phase" not in progress, progress
    assert "step    5/40" in progress
    assert "ETA     18s" in progress and "elapsed 2s" in progress, progress   # the step-5 event's own ETA
    assert "waiting for the" not in loss, loss
    assert f"loss {format_number(loss_at(1))}" in loss, loss


def test_the_preparation_phase_ends_when_the_run_starts():
    """A log with no figures yet (an older engine, or a resume's first steps) reads as training,
    with the progress event's own ETA, not as the last preparation phase."""
    f = RunFigures()
    f.apply_all([PhaseProgress(name=Phase.CACHING_LATENTS, done=16, total=16, time=T0)])
    assert f.phase is not None and f.status == "preparing"
    f.apply(RunStarted(run_dir="/r", total_steps=40, total_epochs=4, steps_per_epoch=10, num_images=16,
                       batch_size=4, device="cpu", time=T0 + 1))
    assert f.phase is None
    f.apply(StepProgress(step=5, total_steps=40, epoch=1, elapsed_s=2.5, eta_s=17.5, time=T0 + 3))
    assert (f.step, f.elapsed_s, f.eta_s, f.status) == (5, 2.5, 17.5, "running")


class LongRun(FakeEngine):
    """Hours of a big run on an 80 GB card: the widest figures the panes must hold."""

    def _metrics(self, step):
        m = super()._metrics(step)
        return replace(m, elapsed_s=3600 + step * 7.3, eta_s=(self.total_steps - step) * 7.3,
                       vram_total=79.6 * GIB, vram_peak=61.4 * GIB, vram_allocated=40.2 * GIB,
                       vram_reserved=70.1 * GIB)


def test_a_long_run_keeps_every_value_whole_at_80x24(tmp_path):
    engine = LongRun(tmp_path / "run", total_steps=12000, hold_at=1234, sample_every=10**6, validate_every=1000)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: engine.held.is_set() and screen.figures.step == 1234)
        await settle(pilot, screen)
        out["text"] = screen_text(app)
        await pilot.press("l")
        await settle(pilot, screen)
        out["log"] = screen_text(app)
        engine.release.set()
        await wait_until(pilot, lambda: screen.handle.done.is_set())
        await pilot.press("q")

    run_app(engine, scenario, config="photos-portrait-run.toml")
    text = out["text"]
    status = text.splitlines()[0]
    assert "…" not in status, status
    for value in ("photos-portrait-run", "RUNNING", "step 1234/12000", "ETA 21h49m"):
        assert value in status, (value, status)
    progress, memory = pane(text, "Progress"), pane(text, "Memory")
    assert "elapsed 3h30m" in progress and "ETA     21h49m" in progress, progress
    for figure in ("61.4 GiB", "40.2 GiB", "70.1 GiB", "79.6 GiB on cuda:0"):
        assert figure in memory, (figure, memory)
    title = pane(text, "Loss").splitlines()[0]
    val = format_number(round(loss_at(1000) * 1.2, 6))   # the fake engine's validation loss
    assert title.endswith(f"val {val}"), title   # the running average and the "@step" went, whole
    scope = pane(out["log"], "Loss").splitlines()[-2]   # the x axis says what the chart shows
    assert "recent · log scale" in scope, scope


def test_fit_parts_leaves_out_whole_parts_least_needed_first():
    parts = [(2, Text("sdft")), (5, Text("photos")), (9, Text("RUNNING")), (8, Text("step 1/10")),
             (7, Text("ETA 3h05m")), (1, Text("cuda:0"))]
    assert fit_parts(parts, 80).plain == "sdft · photos · RUNNING · step 1/10 · ETA 3h05m · cuda:0"
    assert fit_parts(parts, 44).plain == "photos · RUNNING · step 1/10 · ETA 3h05m"
    assert fit_parts(parts, 7).plain == "RUNNING"
    assert fit_parts(parts, 5).plain == "RUNN…"
    assert fit_parts(parts, 0).plain.startswith("sdft")   # not measured yet: all of it


def test_the_memory_total_of_a_multi_gpu_run_shortens_its_words_not_its_figure():
    from sdft_tui.widgets.vram_meter import VramMeter

    f = RunFigures()
    f.apply(RunStarted(run_dir="/r", total_steps=40, total_epochs=4, steps_per_epoch=10, num_images=16,
                       batch_size=4, device="cuda:0", processes=4, global_batch=16, time=T0))
    meter = VramMeter(f)
    assert meter._total("79.6 GiB", "cuda:0", 60) == "79.6 GiB per GPU (cuda:0 of 4)"
    assert meter._total("79.6 GiB", "cuda:0", 28) == "79.6 GiB per GPU"   # 80 columns: the pane is 28 wide
    assert meter._total("79.6 GiB", "cuda:0", 12) == "79.6 GiB"


def test_a_resumed_run_goes_on_from_its_earlier_points_and_time(tmp_path):
    """`sdft train RUN.toml --tui --resume latest`: the live dashboard reads the run's events so far,
    as `sdft watch` does, so the loss chart and the elapsed time go on instead of starting over."""
    from train_helpers import make_run

    config = make_run(tmp_path, tmp_path / "no-model-needed")
    run_dir = tmp_path / "runs" / "t"
    first = FakeEngine(run_dir, total_steps=40, hold_at=10, sample_every=10_000)

    async def stop_at_ten(app, pilot, screen):
        await wait_until(pilot, lambda: first.held.is_set())
        await pilot.press("x", "y")
        await wait_until(pilot, lambda: screen.handle.done.is_set())
        await pilot.press("q")

    run_app(first, stop_at_ten, config=str(config))
    resumed = FakeEngine(run_dir, total_steps=40, start_step=10, hold_at=12, sample_every=10_000)
    out = {}

    async def watch_the_resume(app, pilot, screen):
        await wait_until(pilot, lambda: resumed.held.is_set() and screen.figures.step == 12)
        await settle(pilot, screen)
        out["steps"] = list(screen.figures.steps)
        out["header"] = screen_text(app).splitlines()[0]
        out["outcome"] = screen.query_one("#outcome").display
        resumed.release.set()
        await wait_until(pilot, lambda: screen.handle.done.is_set())
        await pilot.press("q")

    run_app(resumed, watch_the_resume, config=str(config), resume="latest")
    assert out["steps"] == list(range(1, 13)), out["steps"]
    assert "RUNNING" in out["header"] and "elapsed 11s" in out["header"], out["header"]   # 5 s before the stop + 6 s
    assert not out["outcome"]   # the earlier stop's outcome is not shown over the resumed run

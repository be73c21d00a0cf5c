"""The run dashboard: figures from events, the bridge, and the run screen driven by a fake engine
on a real thread under Pilot (normal run, failure, OOM, user stop, keys, quit, SIGHUP, watch)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import threading

import pytest
from dashboard_helpers import T0, FakeEngine, loss_at, run_app, screen_text, settle, wait_thread_event, wait_until
from fresh_process import snippet

from engine.events import JsonlSink, ListSink, RunFinished, RunStarted, StepMetrics, read_events
from engine.vocabulary import exit_code_for
from sdft_tui.bridge import EventFollower, MessageSink
from sdft_tui.dashboard import DashboardApp, dashboard_signals, finish_run, run_dashboard
from sdft_tui.engine_handle import EngineHandle
from sdft_tui.run_figures import RunFigures, format_duration, format_number, format_offset
from sdft_tui.screens.confirm import ChoiceScreen, ConfirmScreen
from sdft_tui.screens.run import RunScreen, WatchScreen
from sdft_tui.widgets.loss_chart import plot_braille, sparkline


def metrics(step: int, loss: float = 0.1, **kw) -> StepMetrics:
    base = dict(step=step, total_steps=100, epoch=1, loss=loss, loss_avg=loss, lr=1e-4, grad_norm=None,
                it_per_s=2.0, samples_per_s=8.0, eta_s=10.0, elapsed_s=step * 0.5, time=T0 + step)
    base.update(kw)
    return StepMetrics(**base)


# ---------------------------------------------------------------------- pure parts


def test_figures_follow_the_stream_and_smooth_the_loss():
    f = RunFigures()
    engine = FakeEngine("/nowhere", total_steps=20, write_events=False)
    sink = ListSink()
    from engine.control import RunControl

    engine(None, sink=sink, control=RunControl())
    f.apply_all(sink.events)
    assert f.status == "completed" and not f.running
    assert f.steps == list(range(1, 21)) and len(f.smooth) == 20
    # The debiased EMA starts at the first loss and stays inside the range of the raw losses.
    assert f.smooth[0] == pytest.approx(f.loss[0])
    assert min(f.loss) <= f.smooth[-1] <= max(f.loss)
    assert [s.step for s in f.samples] == [20]
    texts = [line.text for line in f.log]
    assert any("caching latents: done (16)" in t for t in texts)
    assert any(t.startswith("run completed at step 20") for t in texts)
    # Offsets from the first event (engine clock), not wall time: replays read the same.
    assert f.log[0].render().startswith("+00:00 ") and f.log[2].render().startswith("+00:04 started on cuda:0")


def test_formatters():
    assert format_offset(65) == "+01:05" and format_offset(3725) == "+1:02:05"
    assert format_duration(None) == "-" and format_duration(42) == "42s"
    assert format_duration(380) == "6m20s" and format_duration(3 * 3600 + 300) == "3h05m"
    assert exit_code_for("completed") == 0 and exit_code_for("failed") == 3 and exit_code_for("stopped") == 130


def test_braille_plot_draws_band_and_line_inside_the_box():
    raw = [1.0, 3.0, 2.0, 4.0, 0.5, 2.5] * 20
    smooth = [2.0] * len(raw)
    rows, low, high = plot_braille(raw, smooth, width=10, height=4)
    assert len(rows) == 4 and all(len(r) == 10 for r in rows)
    assert (low, high) == (0.5, 4.0)
    layers = {layer for row in rows for _, layer in row}
    assert {"raw", "smooth"} <= layers
    # Every column has ink: the curve has no gaps.
    assert all(any(rows[r][c][0] != " " for r in range(4)) for c in range(10))
    rows, low, high = plot_braille([1.0, 10.0, 100.0], [1.0, 10.0, 100.0], 6, 3, log=True)
    assert low == pytest.approx(1.0) and high == pytest.approx(100.0)
    assert sparkline([1, 1, 1], 3) == "▄▄▄" and sparkline([0, 1], 2) == "▁█"


def test_bridge_coalesces_and_keeps_every_event():
    class Target:
        def __init__(self):
            self.posted = []

        def post_message(self, message):
            self.posted.append(message)
            return True

    target = Target()
    sink = MessageSink(target)
    threads = [threading.Thread(target=lambda k=k: [sink.emit(metrics(k * 1000 + i)) for i in range(500)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(target.posted) == 1          # one message in flight, whatever the rate
    events = sink.drain()
    assert len(events) == 2000 and sink.drain() == []
    for k in range(4):                      # each thread's order is kept
        mine = [e.step for e in events if e.step // 1000 == k]
        assert mine == sorted(mine)
    sink.emit(metrics(1))
    assert len(target.posted) == 2          # after a drain the next event posts again
    sink.close()
    sink.emit(metrics(2))
    assert len(target.posted) == 2 and sink.drain() == [metrics(1)]


def test_bridge_survives_a_dead_target():
    class Dead:
        def post_message(self, message):
            raise RuntimeError("Event loop is closed")

    sink = MessageSink(Dead())
    for i in range(5):
        sink.emit(metrics(i))   # never raises into the engine
    assert sink.closed and sink.drain() == []


def test_follower_reads_complete_lines_only(tmp_path):
    path = tmp_path / "events.jsonl"
    follower = EventFollower(path)
    assert follower.poll() == []            # no file yet: the run has not started
    line = json.dumps(metrics(1).to_dict())
    path.write_text(line + "\n" + line[:20])
    assert [e.step for e in follower.poll()] == [1]
    with open(path, "a") as fh:
        fh.write(line[20:] + "\nnot json\n" + json.dumps({"event": "from_the_future"}) + "\n")
    assert [e.step for e in follower.poll()] == [1]
    path.write_text(json.dumps(metrics(7).to_dict()) + "\n")   # a new run in the same folder
    assert [e.step for e in follower.poll()] == [7] and follower.restarted


# ---------------------------------------------------------------------- Pilot helpers









def finished(screen) -> bool:
    return screen.figures.finished is not None and screen.handle.done.is_set()


# ---------------------------------------------------------------------- live runs


def test_normal_run_completes_in_a_worker_thread(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=40)
    seen = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        seen["text"] = screen_text(app)
        seen["messages"] = screen.sink.posted_messages
        chart = screen.query_one("#loss-chart")
        await pilot.press("l", "w")
        assert chart.log_scale and chart.whole_run and "whole run · log scale" in str(chart.render())
        await pilot.press("q")          # finished: closes without a question
        await pilot.pause()

    app, handle = run_app(engine, scenario, config=tmp_path / "run.toml", size=(100, 34))
    assert engine.thread_names and engine.thread_names[0] != threading.main_thread().name
    assert engine.calls[0]["log_path"] is None or str(engine.calls[0]["log_path"]).endswith("sdft.log")
    assert app.return_code == 0 and handle.exit_code == 0
    assert "COMPLETED" in seen["text"] and "Training completed at step 40" in seen["text"]
    assert "final.safetensors" in "".join(seen["text"].split())  # a long tmp path may wrap
    assert "step    40/40" in seen["text"] and "8.0 GiB on cuda:0" in seen["text"]
    assert seen["messages"] < 60   # events coalesce into few messages (61 events were sent)


def test_keys_reach_run_control_and_stop_saves_a_state(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=10)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_thread_event(engine.held)
        control = screen.control
        await pilot.press("s")
        assert control.take_save_request()           # the key reached RunControl
        await pilot.press("n")
        assert control.take_sample_request()
        control.request_save()                        # let the loop see one for real
        await pilot.press("p")
        assert control.paused
        await wait_until(pilot, lambda: screen.figures.status == "paused")
        await settle(pilot, screen)
        out["paused"] = screen_text(app)
        await pilot.press("p")
        assert not control.paused
        await pilot.press("x")                        # stop asks first
        assert isinstance(app.screen, ChoiceScreen)
        await pilot.press("n")
        assert not control.stop_requested and app.screen is screen
        await pilot.press("x")
        await pilot.press("y")
        assert control.stop_requested and control.save_state_on_stop
        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        out["text"] = screen_text(app)
        await pilot.press("q")
        await pilot.pause()

    app, handle = run_app(engine, scenario)
    assert {"pause", "save", "stop"} <= set(engine.seen)
    assert "PAUSED" in out["paused"]
    assert "Training stopped" in out["text"] and "Resume: sdft train run.toml --resume" in out["text"]
    assert app.return_code == 130 and handle.exit_code == 130


def test_quit_while_training_asks_then_waits_for_the_save(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=5, slow_save=True)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_thread_event(engine.held)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")                  # keep training
        assert app.screen is screen and not screen.control.stop_requested
        await pilot.press("ctrl+c")                  # Ctrl+C asks too
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.screen is screen and not screen.control.stop_requested
        # Ctrl+Q (the app's own quit) goes through the same question.
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        assert screen.control.stop_requested
        await wait_thread_event(engine.saving)
        await settle(pilot, screen)
        out["text"] = screen_text(app)
        assert app.return_code is None                # still open while the engine saves
        await pilot.press("q")                        # pressing again does not abandon the save
        assert app.screen is screen
        engine.save_gate.set()
        await wait_until(pilot, lambda: app.return_code is not None)

    app, handle = run_app(engine, scenario)
    assert "Stopping: waiting for the engine to save a resumable state" in out["text"]
    assert handle.done.is_set() and "stop" in engine.seen
    assert app.return_code == 130


@pytest.mark.parametrize("ending", ["fail", "raise"])
def test_failure_shows_message_and_log_path(tmp_path, ending):
    engine = FakeEngine(tmp_path / "run", total_steps=20, ending=ending, fail_at=7)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        out["text"] = screen_text(app)
        await pilot.press("q")
        await pilot.pause()

    handle = EngineHandle(log_path=tmp_path / "run" / "sdft.log")
    app = DashboardApp(lambda: RunScreen("run.toml", engine=engine, handle=handle))

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            await scenario(app, pilot, app.dashboard)
    asyncio.run(main())
    text = out["text"]
    assert "FAILED" in text and "Training failed at step 7" in text
    expected = "caption file unreadable" if ending == "fail" else "NaN loss at step 7"
    assert expected in text
    assert "sdft.log" in text.replace("\n", "").replace("┃", "").replace(" ", "")
    assert app.return_code == 3 and handle.exit_code == 3


def test_out_of_memory_shows_what_to_change(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=20, ending="oom", fail_at=3)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        out["text"] = screen_text(app)

    app, handle = run_app(engine, scenario, size=(120, 40))
    text = out["text"]
    assert "Out of GPU memory at step 3" in text
    assert "gradient checkpointing" in text and "8-bit Adam" in text     # generic: no readable TOML here
    assert handle.exit_code == 3


def test_out_of_memory_advice_comes_from_the_planner(tmp_path):
    from engine.oom_advice import GENERIC_ADVICE, oom_advice

    toml = tmp_path / "run.toml"
    toml.write_text('config_version = 1\n[model]\npretrained_model_name_or_path = "m"\n'
                    '[general]\nresolution = 512\nbatch_size = 4\n'
                    '[[datasets]]\n  [[datasets.subsets]]\n  image_dir = "images"\n  metadata_file = "meta.json"\n')
    (tmp_path / "images").mkdir()
    (tmp_path / "meta.json").write_text("{}")
    advice = oom_advice(toml, 8.0 * 2**30)
    assert advice and any("->" in line for line in advice)    # planner lines: "x: 11.2 -> 7.9 GB"
    assert any("memory.gradient_checkpointing = true" in line for line in advice)
    assert oom_advice(toml, None) == list(GENERIC_ADVICE)     # the card's size unknown: the usual list


@pytest.mark.parametrize("name", ["SIGHUP", "SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_the_run_with_a_saved_state(tmp_path, name):
    engine = FakeEngine(tmp_path / "run", total_steps=100, hold_at=5)

    async def scenario(app, pilot, screen):
        await wait_thread_event(engine.held)
        dashboard_signals(app, detached=False).handle(getattr(signal, name))   # what the handler runs
        await pilot.pause()

    app, handle = run_app(engine, scenario)
    assert handle.control.stop_requested and name in handle.control.stop_reason
    assert finish_run(handle, detached=False) == 130     # waits for the engine's save
    assert "stop" in engine.seen and handle.result.state_path


def test_sighup_leaves_a_detached_run_training(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=30, hold_at=5)

    async def scenario(app, pilot, screen):
        await wait_thread_event(engine.held)
        dashboard_signals(app, detached=True).handle(signal.SIGHUP)
        await pilot.pause()
        assert app._exit_renderables is not None or app.return_code is not None   # the UI is closing
        assert not screen.control.stop_requested
        engine.release.set()   # the run goes on without a screen

    app, handle = run_app(engine, scenario)
    assert not handle.control.stop_requested
    assert finish_run(handle, detached=True) == 0
    assert handle.result.status == "completed"


def test_run_dashboard_returns_the_exit_code(tmp_path, monkeypatch):
    """The entry point with the app's run() replaced by a headless Pilot session."""
    engine = FakeEngine(tmp_path / "run", total_steps=10)

    def headless_run(self, *args, **kwargs):
        async def main():
            async with self.run_test(size=(80, 24)) as pilot:
                await wait_until(pilot, lambda: self.dashboard is not None and finished(self.dashboard))
                await pilot.press("q")
                await pilot.pause()
        asyncio.run(main())
        return self.return_code

    monkeypatch.setattr(DashboardApp, "run", headless_run)
    assert run_dashboard(tmp_path / "run.toml", engine=engine) == 0


# ---------------------------------------------------------------------- sdft watch


def test_watch_shows_the_same_figures_as_the_live_screen(tmp_path):
    run_dir = tmp_path / "run"
    engine = FakeEngine(run_dir, total_steps=40, ending="oom", fail_at=33)
    live = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        live["summary"] = screen.figures.summary()
        live["log"] = [line.render() for line in screen.figures.log]
        live["panes"] = {w: str(screen.query_one(w).render()) for w in ("#throughput", "#vram", "#loss-chart")}

    run_app(engine, scenario, size=(100, 30))
    assert len(read_events(run_dir / "events.jsonl")) > 40
    watched = {}
    app = DashboardApp(lambda: WatchScreen(run_dir / "events.jsonl"))

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.dashboard
            await wait_until(pilot, lambda: screen.figures.finished is not None)
            await settle(pilot, screen)
            watched["summary"] = screen.figures.summary()
            watched["log"] = [line.render() for line in screen.figures.log]
            watched["panes"] = {w: str(screen.query_one(w).render()) for w in ("#throughput", "#vram", "#loss-chart")}
            watched["text"] = screen_text(app)
            await pilot.press("x")              # the run is over: no control keys
            await pilot.press("q")
            await pilot.pause()
    asyncio.run(main())
    assert watched["summary"] == live["summary"]
    assert watched["log"] == live["log"]
    assert watched["panes"] == live["panes"]
    assert "Out of GPU memory at step 33" in watched["text"] and "Stop" not in watched["text"].splitlines()[-1]
    assert app.return_code == 0


def test_watch_follows_a_run_that_is_still_writing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    app = DashboardApp(lambda: WatchScreen(run_dir / "events.jsonl"))

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.dashboard
            await settle(pilot, screen)
            assert "waiting for" in screen_text(app)
            sink = JsonlSink(run_dir / "events.jsonl")
            for step in range(1, 6):
                sink.emit(metrics(step))
            await wait_until(pilot, lambda: screen.figures.step == 5)
            sink.emit(metrics(6))
            await wait_until(pilot, lambda: screen.figures.step == 6)
            sink.emit(RunFinished(status="completed", step=6, epoch=1, time=T0 + 7))
            sink.close()
            await wait_until(pilot, lambda: not screen.figures.running)
            await pilot.press("q")
            await pilot.pause()
    asyncio.run(main())
    assert app.return_code == 0


def test_watch_run_rejects_a_missing_folder(tmp_path, capsys):
    from sdft_tui.dashboard import watch_run

    assert watch_run(tmp_path / "nope" / "run") == 2
    assert "no such run folder" in capsys.readouterr().err


def test_fast_steps_coalesce_and_no_point_is_lost(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=3000, sample_every=500, write_events=False)
    out = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        out["points"] = len(screen.figures.loss)
        out["messages"] = screen.sink.posted_messages

    run_app(engine, scenario)
    assert out["points"] == 3000
    assert out["messages"] < 3000   # many events per message, whatever the step rate


def test_sample_pane_browses_the_samples_and_grids(tmp_path):
    from PIL import Image

    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    for step in (5, 10, 15):
        Image.new("RGB", (32, 32), (200, 40, 40)).save(run_dir / "samples" / f"step-{step:06d}-0.png")
        Image.new("RGB", (32, 48), (40, 40, 200)).save(run_dir / "samples" / f"t_s{step:08d}_grid.png")
    engine = FakeEngine(run_dir, total_steps=15, sample_every=5)
    captions = []

    async def scenario(app, pilot, screen):
        from textual.widgets import Static

        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        caption = screen.query_one("#sample-caption", Static)
        captions.append(str(caption.render()))
        await pilot.press("left_square_bracket")
        captions.append(str(caption.render()))
        await pilot.press(*["left_square_bracket"] * 4)
        captions.append(str(caption.render()))
        await pilot.press(*["right_square_bracket"] * 5)
        captions.append(str(caption.render()))

    run_app(engine, scenario, size=(100, 34))
    # Each sampling point shows its grid once it is written; its single images stay browsable.
    assert captions[0].startswith("step 15 · 6/6") and "grid of the prompt" in captions[0]
    assert captions[1].startswith("step 15 · 5/6") and "a photo of a cat" in captions[1] and "browsing" in captions[1]
    assert captions[2].startswith("step 5 · 1/6") and "a photo of a cat" in captions[2]
    assert captions[3].startswith("step 15 · 6/6") and "browsing" not in captions[3]


def test_validation_loss_shows_beside_the_training_loss_and_in_the_log(tmp_path):
    engine = FakeEngine(tmp_path / "run", total_steps=20, validate_every=10)
    seen = {}

    async def scenario(app, pilot, screen):
        await wait_until(pilot, lambda: finished(screen))
        await settle(pilot, screen)
        seen["text"] = screen_text(app)
        seen["figures"] = screen.figures

    run_app(engine, scenario, size=(100, 34))
    f = seen["figures"]
    assert f.validation_steps == [10, 20]
    assert f.validation == (20, pytest.approx(loss_at(20) * 1.2, abs=1e-6))
    assert f"val {format_number(f.validation_loss[-1])} @20" in seen["text"]
    assert any(line.text.startswith("validation loss at step 10:") for line in f.log)


def test_a_resume_drops_the_validation_points_after_its_step():
    f = RunFigures()
    engine = FakeEngine("/nowhere", total_steps=20, write_events=False, validate_every=5)
    sink = ListSink()
    from engine.control import RunControl

    engine(None, sink=sink, control=RunControl())
    f.apply_all(sink.events)
    assert f.validation_steps == [5, 10, 15, 20] and f.summary()["validation_loss"] == f.validation_loss[-1]
    started = next(e for e in sink.events if isinstance(e, RunStarted))
    f.apply(dataclasses.replace(started, start_step=10, time=T0 + 100))   # a resume from step 10
    assert f.validation_steps == [5, 10] and len(f.validation_loss) == 2


def test_open_run_screen_pushes_onto_another_app(tmp_path):
    from textual.app import App

    from sdft_tui.dashboard import open_run_screen

    engine = FakeEngine(tmp_path / "run", total_steps=5)
    codes = []

    class Wizard(App):
        pass

    async def main():
        app = Wizard()
        async with app.run_test(size=(80, 24)) as pilot:
            screen = open_run_screen(app, tmp_path / "run.toml", engine=engine, on_close=codes.append)
            await pilot.pause()
            assert app.screen is screen
            await wait_until(pilot, lambda: finished(screen))
            await pilot.press("q")
            await wait_until(pilot, lambda: codes)
            assert app.screen is not screen          # back to the wizard
    asyncio.run(main())
    assert codes == [0]


DASHBOARD_IMPORTS = snippet(
    "the dashboard modules", "import sys, sdft_tui.dashboard, sdft_tui.screens.run; "
    "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")


def test_modules_open_without_torch(in_fresh_process):
    out = in_fresh_process(DASHBOARD_IMPORTS)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

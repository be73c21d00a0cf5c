"""A stop is prompt: it interrupts sampling at the next image and caching at the next entry,
and a stop during caching says what was kept."""

from __future__ import annotations

from train_helpers import make_run

from engine.control import RunControl
from engine.events import CallbackSink, FanOut, ListSink, PhaseProgress, SampleSaved
from engine.runner import run_training


def _messages(sink) -> list[str]:
    return [e.text for e in sink.events if e.kind == "message"]


def test_a_stop_while_caching_stops_at_the_next_entry_and_says_what_was_kept(tmp_path, tiny_sd1):
    control = RunControl()

    def on_event(event):
        if isinstance(event, PhaseProgress) and event.name == "caching latents" and event.done == 2:
            control.request_stop("SIGINT received")

    config = make_run(tmp_path, tiny_sd1, steps=2)
    result = run_training(config, sink=FanOut([ListSink(), CallbackSink(on_event)]), control=control)
    assert result.status == "stopped"
    assert "the 2 of 6 latents encoded so far are kept in the cache" in result.message, result.message
    sink = ListSink()
    assert run_training(config, sink=sink).status == "completed", "a stop before any step leaves no history"
    assert any("latent cache: 2 reused" in m for m in _messages(sink)), _messages(sink)


def test_a_stop_while_sampling_stops_at_the_next_image(tmp_path, tiny_sd1):
    control = RunControl()
    prompts = ", ".join(f'"prompt {i} --w 64 --h 64 --s 1"' for i in range(5))
    config = make_run(tmp_path, tiny_sd1, steps=3,
                      save_extra=f"[sample]\nevery_n_steps = 1\nprompts = [{prompts}]\n")

    def on_event(event):
        if isinstance(event, SampleSaved) and event.index == 0:
            control.request_stop("SIGINT received")

    sink = ListSink()
    result = run_training(config, sink=FanOut([sink, CallbackSink(on_event)]), control=control)
    assert result.status == "stopped" and result.global_step == 1
    assert [e.index for e in sink.of(SampleSaved)] == [0], "the other four images were not drawn"
    assert any("sampling stopped after 1 of 5 image(s)" in m for m in _messages(sink)), _messages(sink)
    assert result.state_path, "the stop still saves its state"

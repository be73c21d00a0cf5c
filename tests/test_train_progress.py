"""The trainer reports every step: StepMetrics each logging interval, StepProgress in between."""

from __future__ import annotations

from engine.events import ListSink, StepMetrics, StepProgress, read_events
from engine.runner import run_training
from train_helpers import make_run


def test_every_step_is_reported_and_replays_from_events_jsonl(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=5)
    config.write_text(config.read_text().replace("[logging]\nevery_n_steps = 1", "[logging]\nevery_n_steps = 3"))
    sink = ListSink()
    assert run_training(config, sink=sink).status == "completed"
    assert [e.step for e in sink.of(StepMetrics)] == [3, 5]            # the interval, and the last step
    progress = sink.of(StepProgress)
    assert [e.step for e in progress] == [1, 2, 4]
    assert all(e.total_steps == 5 and e.epoch >= 1 for e in progress)
    assert [e.elapsed_s for e in progress] == sorted(e.elapsed_s for e in progress)
    replayed = read_events(tmp_path / "runs" / "t" / "events.jsonl")
    assert [e.step for e in replayed if isinstance(e, StepProgress)] == [1, 2, 4]

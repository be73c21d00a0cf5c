"""The trainer reports every step: StepMetrics at the first step and each logging interval,
StepProgress in between, with an ETA that moves every step."""

from __future__ import annotations

import math

from train_helpers import make_run

from engine.events import ListSink, StepMetrics, StepProgress, read_events
from engine.runner import run_training


def test_every_step_is_reported_and_replays_from_events_jsonl(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=6)
    config.write_text(config.read_text().replace("[logging]\nevery_n_steps = 1", "[logging]\nevery_n_steps = 3"))
    sink = ListSink()
    assert run_training(config, sink=sink).status == "completed"
    # the first step (the loss shows from the start), the interval, and the last step
    assert [e.step for e in sink.of(StepMetrics)] == [1, 3, 6]
    progress = sink.of(StepProgress)
    assert [e.step for e in progress] == [2, 4, 5]
    assert all(e.total_steps == 6 and e.epoch >= 1 for e in progress)
    assert [e.elapsed_s for e in progress] == sorted(e.elapsed_s for e in progress)
    # an ETA at every step, at the last interval's speed: one step fewer to go, a smaller ETA
    etas = {e.step: e.eta_s for e in progress}
    assert all(eta is not None and 0 < eta < math.inf for eta in etas.values()), etas
    assert etas[5] < etas[4]
    replayed = read_events(tmp_path / "runs" / "t" / "events.jsonl")
    assert [(e.step, e.eta_s) for e in replayed if isinstance(e, StepProgress)] == [(e.step, e.eta_s) for e in progress]


def test_the_eta_leaves_the_first_steps_warm_up_out():
    """Step 1 took 10 s (the first batch, kernels, caches), the next two 1 s each: until an
    interval has been measured after it, the ETA is at 1 step/s, not at the 4 s per step of the mean."""
    from types import SimpleNamespace

    from engine.train.hooks import MetricsHook

    hook = MetricsHook(parts=None)
    hook.first = (1, 10.0)
    assert hook.eta_s(SimpleNamespace(step=3, total_steps=100, elapsed_s=12.0)) == 97.0
    hook.rate = 2.0   # a logging interval measured 2 steps/s: from then on, its speed
    assert hook.eta_s(SimpleNamespace(step=20, total_steps=100, elapsed_s=30.0)) == 40.0
    resumed = MetricsHook(parts=None)   # a resume's first step: its own speed
    resumed.first = (51, 4.0)
    assert resumed.eta_s(SimpleNamespace(step=51, total_steps=100, elapsed_s=4.0)) == 49 * 4.0

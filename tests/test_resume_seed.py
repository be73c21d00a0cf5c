"""A run file that sets no seed (as older wizard files do) resumes exactly: the state's seed is reused."""

from __future__ import annotations

import pytest
from train_helpers import make_run

from engine.config.problems import ConfigError
from engine.control import RunControl
from engine.events import CallbackSink, FanOut, ListSink, StepMetrics
from engine.runner import run_training
from engine.train.saves.state import find_latest_state, read_counters


def _without_seed(path):
    text = path.read_text()
    assert "seed = 7\n" in text
    path.write_text(text.replace("seed = 7\n", ""))
    return path


def _losses(sink: ListSink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of(StepMetrics)}


def _stop_at(control: RunControl, step: int):
    return CallbackSink(lambda e: isinstance(e, StepMetrics) and e.step == step and control.request_stop("test"))


def test_a_file_without_seed_resumes_with_the_seed_of_its_state(tmp_path, tiny_sd1):
    split = _without_seed(make_run(tmp_path / "b", tiny_sd1, steps=5))
    first, control = ListSink(), RunControl()
    assert run_training(split, sink=FanOut([first, _stop_at(control, 2)]), control=control).status == "stopped"
    state = find_latest_state(tmp_path / "b" / "runs" / "t" / "state")
    seed = read_counters(state).seed

    second = ListSink()
    resumed = run_training(split, sink=second, resume="latest")
    assert resumed.status == "completed", resumed.message
    assert f"seed = {seed}" in (tmp_path / "b" / "runs" / "t" / "config.toml").read_text()

    straight = ListSink()
    full = make_run(tmp_path / "a", tiny_sd1, steps=5, train_extra="")
    full.write_text(full.read_text().replace("seed = 7", f"seed = {seed}"))
    assert run_training(full, sink=straight).status == "completed"
    assert {**_losses(first), **_losses(second)} == _losses(straight)


def test_a_seed_changed_in_the_file_is_named_when_resume_refuses(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=4)
    control = RunControl()
    run_training(config, sink=_stop_at(control, 1), control=control)
    config.write_text(config.read_text().replace("seed = 7", "seed = 8"))
    with pytest.raises(ConfigError) as refused:   # refused before training starts, as --check refuses it
        run_training(config, sink=ListSink(), resume="latest")
    message = str(refused.value)
    assert "train.seed (the state was trained with 7, the file says 8)" in message
    assert "training options" not in message     # nothing else changed

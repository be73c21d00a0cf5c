"""A start never destroys a run's history: a folder holding states or events needs --resume
or --restart, and --restart keeps the earlier run (docs/run-folder.md, "Starting again")."""

from __future__ import annotations

import json

import pytest
from train_helpers import make_run

from engine.cli import main
from engine.config.problems import ConfigError
from engine.events import read_events
from engine.runner import run_training

SAVE = "every_n_steps = 2\nstate = true\nlast_n_states = 1\n"


def _steps(events_path) -> list[int]:
    return [e.step for e in read_events(events_path) if e.kind == "step"]


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, tiny_sd1):
    """A run that trained 4 steps, with a state at step 4 and 4 steps of events."""
    folder = tmp_path_factory.mktemp("history")
    config = make_run(folder, tiny_sd1, steps=4, save_extra=SAVE + "state_on_train_end = true\n")
    assert run_training(config).status == "completed"
    return folder, config


def test_a_start_without_resume_is_refused_naming_the_newest_state_and_both_ways_on(trained_once, capsys):
    folder, config = trained_once
    run_dir = folder / "runs" / "t"
    before = (run_dir / "events.jsonl").read_bytes()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "step 4" in err and "t-step00000004-state" in err
    assert "--resume latest" in err and "--restart" in err
    assert (run_dir / "events.jsonl").read_bytes() == before, "nothing of the earlier run was touched"
    assert main(["train", str(config), "--check"]) == 2, "--check refuses what training refuses"
    assert "--restart" in capsys.readouterr().err


def test_restart_keeps_the_earlier_run_in_the_folder_and_starts_at_step_0(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=2, save_extra=SAVE)
    assert run_training(config).status == "completed"
    run_dir = tmp_path / "runs" / "t"
    with pytest.raises(ConfigError):
        run_training(config)
    result = run_training(config, restart=True)
    assert result.status == "completed", result.message
    earlier = list((run_dir / "earlier").iterdir())
    assert len(earlier) == 1
    assert _steps(earlier[0] / "events.jsonl") == [1, 2], "the earlier run's history is kept whole"
    assert (earlier[0] / "checkpoints" / "t.safetensors").is_file()
    assert _steps(run_dir / "events.jsonl") == [1, 2]
    messages = [e.text for e in read_events(run_dir / "events.jsonl") if e.kind == "message"]
    assert any("started over" in m and str(earlier[0]) in m for m in messages), messages


def test_resume_and_restart_together_are_a_usage_error(trained_once, capsys):
    _folder, config = trained_once
    with pytest.raises(SystemExit) as exc:
        main(["train", str(config), "--resume", "latest", "--restart"])
    assert exc.value.code == 2


def test_a_stop_keeps_the_state_it_names_even_when_older_states_have_higher_steps(tmp_path, tiny_sd1):
    """--resume from an early state, with a later one on disk and last_n_states = 1: the state the
    stop writes is the one its resume command names, so it must survive the rotation."""
    config = make_run(tmp_path, tiny_sd1, steps=4, save_extra="every_n_steps = 1\nstate = true\n"
                      "last_n_states = 4\nstate_on_train_end = true\n")
    assert run_training(config).status == "completed"
    state_root = tmp_path / "runs" / "t" / "state"
    early = state_root / "t-step00000001-state"
    config.write_text(config.read_text().replace("last_n_states = 4", "last_n_states = 1")
                      .replace("every_n_steps = 1\nstate = true", "state = true"))

    from engine.control import RunControl
    from engine.events import ListSink

    control = RunControl()

    class StopAtStep2(ListSink):
        def emit(self, event):
            super().emit(event)
            if event.kind == "step" and event.step == 2:
                control.request_stop("test stop")

    result = run_training(config, resume=str(early), control=control, sink=StopAtStep2(), allow_changed=True)
    assert result.status == "stopped", result.message
    assert result.state_path and json.loads((tmp_path / "runs" / "t" / "state" / "t-step00000002-state" /
                                             "counters.json").read_text())["global_step"] == 2
    assert (state_root / "t-step00000002-state").is_dir(), "the stop's state was deleted by the rotation"


def test_tui_refuses_the_same_start_before_the_dashboard_opens(trained_once, capsys):
    _folder, config = trained_once
    assert main(["train", str(config), "--tui"]) == 2
    err = capsys.readouterr().err
    assert "--resume latest" in err and "--restart" in err

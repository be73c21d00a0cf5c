"""The seam's vocabulary: the real engine and the TUI tests' fake engine speak only its words.

The dashboard once labelled phases from a table keyed by the fake engine's "loading" while the
trainer said "loading model", so the labels never applied to a real run. These tests fail if
either side says a word that is not a member of engine/vocabulary.py.
"""

from __future__ import annotations

import json

import pytest
from dashboard_helpers import FakeEngine
from train_helpers import make_run

from engine.control import RunControl
from engine.events import ListSink, PhaseProgress, RunFinished, StatusChanged
from engine.vocabulary import ControlStatus, ExitCode, Phase, RunStatus, exit_code_for, phase_label


def _words(events) -> dict[str, set[str]]:
    words: dict[str, set[str]] = {"phase": set(), "status": set(), "finished": set()}
    for e in events:
        if isinstance(e, PhaseProgress):
            words["phase"].add(e.name)
        elif isinstance(e, StatusChanged):
            words["status"].add(e.status)
        elif isinstance(e, RunFinished):
            words["finished"].add(e.status)
    return words


def _assert_members(words: dict[str, set[str]]) -> None:
    assert words["phase"] <= {p.value for p in Phase}, words["phase"]
    assert words["status"] <= {s.value for s in ControlStatus}, words["status"]
    assert words["finished"] <= {s.value for s in RunStatus}, words["finished"]


@pytest.mark.parametrize("ending", ["complete", "fail", "stop"])
def test_the_fake_engine_speaks_only_the_vocabulary(tmp_path, ending):
    engine = FakeEngine(tmp_path, total_steps=6, ending="fail" if ending == "fail" else "complete",
                        fail_at=3, write_events=False)
    sink, control = ListSink(), RunControl()
    if ending == "stop":
        control.request_stop("test")
    engine(tmp_path / "run.toml", sink=sink, control=control)
    words = _words(sink.events)
    assert words["phase"] == {Phase.LOADING_MODEL, Phase.CACHING_LATENTS}
    assert len(words["finished"]) == 1
    _assert_members(words)


def test_a_real_runs_events_use_only_the_vocabulary(tmp_path, tiny_sd1):
    from engine.runner import run_training

    config = make_run(tmp_path, tiny_sd1, steps=2)
    result = run_training(config, sink=ListSink(), control=RunControl())
    assert result.status == RunStatus.COMPLETED
    lines = [json.loads(line) for line in (tmp_path / "runs" / "t" / "events.jsonl").read_text().splitlines()]
    phases = {e["name"] for e in lines if e["event"] == "phase"}
    assert Phase.LOADING_MODEL in phases          # the label table applies to real runs
    assert phases <= {p.value for p in Phase}
    assert {e["status"] for e in lines if e["event"] == "run_finished"} == {RunStatus.COMPLETED}
    assert {e["status"] for e in lines if e["event"] == "status"} <= {s.value for s in ControlStatus}


def test_exit_codes_follow_the_run_status():
    assert exit_code_for("completed") == ExitCode.OK == 0
    assert exit_code_for(RunStatus.STOPPED) == ExitCode.STOPPED == 130
    assert exit_code_for("failed") == ExitCode.FAILED
    assert exit_code_for(None) == ExitCode.FAILED          # no status: it never finished
    assert exit_code_for("exploded") == ExitCode.FAILED


def test_phase_labels_are_words_and_an_unknown_phase_shows_as_it_is():
    assert phase_label("loading model") == "loading the model"
    assert phase_label(Phase.CACHING_LATENTS) == "caching latents"
    assert phase_label("compiling") == "compiling"

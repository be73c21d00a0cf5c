"""A run folder left in a bad state by a kill is repaired at start, and a deleted one is noticed."""

from __future__ import annotations

import json
import shutil
import threading
import time

from engine import atomic
from engine.control import RunControl
from engine.events import JsonlSink, ListSink, Message, read_events


def test_an_event_log_ending_in_a_partial_line_is_cut_back_before_appending(tmp_path):
    log = tmp_path / "events.jsonl"
    whole = json.dumps({"event": "message", "level": "info", "text": "one", "time": 1.0}) + "\n"
    log.write_text(whole * 2 + '{"event": "step", "st')
    sink = JsonlSink(log)
    assert sink.repaired == len('{"event": "step", "st')
    sink.emit(Message(level="info", text="after the repair"))
    sink.close()
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert [e.text for e in read_events(log)] == ["one", "one", "after the repair"]
    assert JsonlSink(log).repaired == 0, "a whole log is left as it is"


def test_a_log_without_any_newline_is_emptied(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text('{"event": "mess')
    assert JsonlSink(log).repaired == len('{"event": "mess') and log.read_text() == ""


def test_a_deleted_log_calls_back_once_and_starts_again_at_its_path(tmp_path):
    calls = []
    folder = tmp_path / "run"
    sink = JsonlSink(folder / "events.jsonl", on_gone=lambda: calls.append(1))
    sink.emit(Message(level="info", text="before"))
    shutil.rmtree(folder)
    sink.emit(Message(level="info", text="after"))
    sink.emit(Message(level="info", text="later"))
    sink.close()
    assert calls == [1]
    assert [e.text for e in read_events(folder / "events.jsonl")] == ["after", "later"]


def test_leftovers_of_interrupted_saves_are_removed_and_a_lone_old_copy_is_put_back(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".model.safetensors.ab12cd.tmp").write_bytes(b"half")
    (run / "checkpoints" / "model.safetensors").write_bytes(b"whole")
    (run / "state" / "t-step00000004-state.tmp").mkdir(parents=True)
    (run / "state" / "t-step00000004-state.tmp" / "part").write_bytes(b"x")
    (run / "state" / "t-step00000002-state.old").mkdir()            # its new copy never arrived
    (run / "state" / "t-step00000002-state.old" / "manifest.json").write_text("{}")
    (run / "state" / "t-step00000001-state").mkdir()
    (run / "state" / "t-step00000001-state.old").mkdir()             # superseded by a whole copy
    removed = atomic.remove_leftovers(run)
    assert sorted(p.name for p in removed) == [".model.safetensors.ab12cd.tmp", "t-step00000001-state.old",
                                                "t-step00000004-state.tmp"]
    assert (run / "state" / "t-step00000002-state" / "manifest.json").is_file()
    assert (run / "checkpoints" / "model.safetensors").read_bytes() == b"whole"
    assert atomic.remove_leftovers(run) == []


def test_a_run_whose_folder_is_deleted_stops_and_saves_its_state_at_the_same_path(tmp_path, tiny_sd1):
    from train_helpers import make_run

    from engine.runner import run_training

    config = make_run(tmp_path, tiny_sd1, steps=10_000)
    run_dir = tmp_path / "runs" / "t"
    sink, control, results = ListSink(), RunControl(), []
    worker = threading.Thread(target=lambda: results.append(run_training(config, sink=sink, control=control)))
    worker.start()
    deadline = time.time() + 240
    while time.time() < deadline and not any(e.kind == "step" for e in sink.events):
        time.sleep(0.05)
    shutil.rmtree(run_dir)
    worker.join(timeout=240)
    if worker.is_alive():
        control.request_stop("test timeout")
        worker.join()
    result = results[0]
    assert result.status == "stopped", result.message
    assert any(e.kind == "message" and "was deleted while training" in e.text for e in sink.events)
    assert result.state_path and (run_dir / "state").is_dir()
    assert any((run_dir / "state").glob("t-step*-state/manifest.json"))

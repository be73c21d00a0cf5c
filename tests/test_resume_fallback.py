"""--resume latest takes the newest state that verifies and names the ones it passed over."""

from __future__ import annotations

import json

import pytest
from train_helpers import make_run

from engine.events import ListSink, read_events
from engine.runner import run_training

SAVE = "every_n_steps = 1\nstate = true\nstate_on_train_end = true\nlast_n_states = 3\n"


def _losses(events_path):
    return {e.step: e.loss for e in read_events(events_path) if e.kind == "step"}


@pytest.mark.slow
def test_a_damaged_newest_state_is_skipped_by_name_and_the_previous_one_resumes(tmp_path, tiny_sd1):
    straight = make_run(tmp_path / "straight", tiny_sd1, steps=5, save_extra=SAVE)
    assert run_training(straight).status == "completed"
    expected = _losses(tmp_path / "straight" / "runs" / "t" / "events.jsonl")

    config = make_run(tmp_path / "broken", tiny_sd1, steps=3, save_extra=SAVE)
    assert run_training(config).status == "completed"
    states = sorted((tmp_path / "broken" / "runs" / "t" / "state").glob("t-step*-state"))
    assert len(states) == 3
    newest = states[-1]
    damaged = newest / "optimizer.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    config.write_text(config.read_text().replace("max_train_steps = 3", "max_train_steps = 5"))
    sink = ListSink()
    result = run_training(config, sink=sink, resume="latest")
    assert result.status == "completed", result.message
    notes = [e.text for e in sink.events if e.kind == "message"]
    assert any("skipped a newer state" in n and str(newest) in n and "optimizer.pt" in n for n in notes), notes
    assert any(f"resumed from {states[-2]} at step 2" in n for n in notes), notes
    resumed = {s: loss for s, loss in _losses(tmp_path / "broken" / "runs" / "t" / "events.jsonl").items() if s > 2}
    assert resumed == {s: expected[s] for s in (3, 4, 5)}, "resumed from step 2, bit for bit"


def test_when_no_state_verifies_resume_refuses_instead_of_starting_over(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=2, save_extra=SAVE)
    assert run_training(config).status == "completed"
    for state in (tmp_path / "runs" / "t" / "state").glob("t-step*-state"):
        manifest = json.loads((state / "manifest.json").read_text())
        manifest["optimizer.pt"] = "0" * 64
        (state / "manifest.json").write_text(json.dumps(manifest))
    result = run_training(config, resume="latest")
    assert result.status == "failed"
    assert "no saved state" in result.message and "verifies" in result.message

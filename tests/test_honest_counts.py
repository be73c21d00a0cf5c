"""Honest counts and events: images left out are named and not counted, prepare's metadata
leaves out what its check could not decode, a caption file that is not UTF-8 is a health
warning, and every event kind numbers epochs the same way."""

from __future__ import annotations

import json

from train_helpers import make_run

from engine.events import Message, ModelSaved, RunFinished, RunStarted, StepMetrics, read_events
from engine.runner import run_training


def truncate(path) -> None:
    """Keep the PNG header (size readable), cut the pixel data (cannot be decoded)."""
    path.write_bytes(path.read_bytes()[:60])


def test_an_undecodable_image_is_named_and_not_counted_as_trained(tmp_path, tiny_sd1):
    from safetensors import safe_open

    config = make_run(tmp_path, tiny_sd1, steps=2)
    truncate(tmp_path / "images" / "im1.png")
    result = run_training(config)
    assert result.status == "completed", result.message
    events = read_events(tmp_path / "runs" / "t" / "events.jsonl")
    started = [e for e in events if isinstance(e, RunStarted)][0]
    assert started.num_images == 5      # 6 listed, 1 cannot be decoded
    texts = [e.text for e in events if isinstance(e, Message)]
    named = [t for t in texts if t.startswith("left out of training:")]
    assert len(named) == 1 and "im1.png" in named[0]
    assert any("1 image(s) left out of training" in t and "5 images train" in t for t in texts)
    with safe_open(result.model_path, "pt") as fh:
        assert fh.metadata()["sdft.num_images"] == "5"


def test_the_console_says_how_many_images_train(tmp_path, tiny_sd1, capsys):
    from engine.console import ConsoleSink

    config = make_run(tmp_path, tiny_sd1, steps=1)
    truncate(tmp_path / "images" / "im4.png")
    assert run_training(config, sink=ConsoleSink()).status == "completed"
    out = capsys.readouterr().out
    assert "training 5 images" in out and "im4.png" in out


def test_saved_and_finished_events_number_epochs_like_step_events(tmp_path, tiny_sd1):
    # 6 images in one 64x64 bucket, batch 2: 3 steps per epoch. Saves at step 2 (inside
    # epoch 1), at the end of epoch 1 (step 3), at step 4 (inside epoch 2) and the final one.
    config = make_run(tmp_path, tiny_sd1, steps=5,
                      save_extra="every_n_steps = 2\nevery_n_epochs = 1\nstate = true\nstate_on_train_end = true")
    result = run_training(config)
    assert result.status == "completed", result.message
    events = read_events(tmp_path / "runs" / "t" / "events.jsonl")
    epoch_of_step = {e.step: e.epoch for e in events if isinstance(e, StepMetrics)}
    assert epoch_of_step == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2}
    saved = [e for e in events if isinstance(e, ModelSaved)]
    assert {e.step for e in saved} == {2, 3, 4, 5} and {e.what for e in saved} == {"model", "state"}
    for e in saved:
        assert e.epoch == epoch_of_step[e.step], e
    finished = [e for e in events if isinstance(e, RunFinished)][0]
    assert (finished.step, finished.epoch) == (5, 2)


def test_a_run_stopped_at_an_epoch_end_reports_that_epoch(tmp_path, tiny_sd1):
    from engine.control import RunControl
    from engine.events import CallbackSink

    control = RunControl()

    def stop_after_epoch_one(event):
        if isinstance(event, StepMetrics) and event.step == 3:
            control.request_stop("test stop")

    config = make_run(tmp_path, tiny_sd1, steps=6)
    result = run_training(config, sink=CallbackSink(stop_after_epoch_one), control=control)
    assert result.status == "stopped", result.message
    events = read_events(tmp_path / "runs" / "t" / "events.jsonl")
    state = [e for e in events if isinstance(e, ModelSaved) and e.what == "state"][0]
    finished = [e for e in events if isinstance(e, RunFinished)][0]
    assert (state.step, state.epoch) == (3, 1) and (finished.step, finished.epoch) == (3, 1)


def _folder_with_a_truncated_image(tmp_path):
    from data_helpers import make_dataset

    folder = tmp_path / "imgs"
    paths = make_dataset(folder, [(64, 64), (96, 64), (64, 96)])
    truncate(paths[1])
    return folder, paths


def test_prepare_check_leaves_undecodable_images_out_of_the_metadata(tmp_path, capsys):
    from engine.data.cli import prepare_command

    folder, paths = _folder_with_a_truncated_image(tmp_path)
    out = tmp_path / "meta.json"
    assert prepare_command([str(folder), "--check", "--out", str(out), "--max-token-length", "150"]) == 1
    meta = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(meta) == ["img000.png", "img002.png"]
    printed = capsys.readouterr().out
    assert "2 images" in printed and "could not decode" in printed and "img001.png" in printed


def test_prepare_without_check_decodes_nothing_and_keeps_every_readable_header(tmp_path):
    from engine.data.cli import prepare_command

    folder, _paths = _folder_with_a_truncated_image(tmp_path)
    out = tmp_path / "meta.json"
    assert prepare_command([str(folder), "--no-check", "--out", str(out)]) == 0   # the check is on by default
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 3


def test_a_caption_file_that_is_not_utf8_is_a_health_warning_naming_it(tmp_path):
    from data_helpers import make_dataset

    from engine.data.captions import read_sidecar
    from engine.data.health import KIND_LABELS as HEALTH_LABELS
    from engine.data.health import check_images

    paths = make_dataset(tmp_path, [(64, 64), (64, 64)])
    latin1 = paths[0].with_suffix(".caption")
    latin1.write_bytes("a café at night".encode("latin-1"))
    report = check_images(paths, captions=[read_sidecar(latin1), "a photo"], max_token_length=None)
    found = report.by_kind()["not_utf8"]
    assert [i.path for i in found] == [str(latin1)]
    assert found[0].severity == "warning" and "U+FFFD" in found[0].message and "0xe9 at offset 5" in found[0].message
    assert read_sidecar(latin1) == "a caf\ufffd at night"   # what the message says sdft trains
    assert "not_utf8" in HEALTH_LABELS
    # captions taken from a metadata file: its sidecars are not what trains, so none are checked
    quiet = check_images(paths, captions=["a", "b"], max_token_length=None, sidecar_extensions=None)
    assert "not_utf8" not in quiet.by_kind()


def test_prepare_check_names_a_tags_file_that_is_not_utf8(tmp_path, capsys):
    from data_helpers import make_dataset

    from engine.data.cli import prepare_command

    folder = tmp_path / "imgs"
    paths = make_dataset(folder, [(64, 64)])
    paths[0].with_suffix(".txt").write_bytes(b"red, \xff\xfe blue")
    assert prepare_command([str(folder), "--check", "--no-write", "--max-token-length", "150"]) == 0
    printed = capsys.readouterr().out
    assert "not_utf8 (warning): 1" in printed and "img000.txt" in printed


def test_a_live_encoded_image_that_cannot_be_decoded_is_left_out_before_training(tmp_path, tiny_sd1):
    # cache.latents = "none": every batch is decoded live; a truncated image used to fail the run
    config = make_run(tmp_path, tiny_sd1, steps=4, cache="none")
    truncate(tmp_path / "images" / "im2.png")
    result = run_training(config)
    assert result.status == "completed", result.message
    events = read_events(tmp_path / "runs" / "t" / "events.jsonl")
    assert [e for e in events if isinstance(e, RunStarted)][0].num_images == 5
    named = [e.text for e in events if isinstance(e, Message) and e.text.startswith("left out of training:")]
    assert len(named) == 1 and "im2.png" in named[0]

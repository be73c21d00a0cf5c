"""The validation loss: held-out images never train, the figure is the same at a step across two
runs and across a stop and resume, training is the same with it on or off, and the event reaches
events.jsonl (the dashboard test is in tests/test_tui_validation.py)."""

from __future__ import annotations

import json

import pytest
from train_helpers import make_run

from engine.control import RunControl
from engine.data.holdout import validation_count
from engine.events import FanOut, ListSink, RunStarted, StepMetrics, ValidationMetrics
from engine.runner import run_training


def _with_split(path, train_extra: str = "validate_every_n_steps = 2\n", split: str = "validation_split = 0.34"):
    text = path.read_text()
    text = text.replace("[train]\n", f"[train]\n{train_extra}", 1)
    text = text.replace("[general]\n", f"[general]\n{split}\n", 1)
    path.write_text(text)
    return path


def _losses(sink: ListSink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of(StepMetrics)}


def _validation(sink: ListSink) -> dict[int, float]:
    return {e.step: e.figures["loss"] for e in sink.of(ValidationMetrics)}


def test_validation_count_matches_kohyas_split():
    assert [validation_count(n, 0.2) for n in (0, 1, 5, 10, 100)] == [0, 0, 1, 2, 20]
    assert validation_count(10, 0.3) == 3          # 10 · 0.7 is 7.000000000000001 in floats
    assert validation_count(2, 0.9) == 1           # at least one image trains
    assert validation_count(7, 0.0) == 0


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, tiny_sd1):
    """One 6-step run with a third of the images held out and validation every 2 steps, for the
    module's tests to read: its events, the images its batches held (recorded at load) and its folder."""
    from engine.data.pipeline import TrainingData

    folder = tmp_path_factory.mktemp("split")
    seen: set[str] = set()
    original = TrainingData.load_batch

    def recording(self, ref, **kwargs):
        batch = original(self, ref, **kwargs)
        seen.update(batch.keys)
        return batch

    config = _with_split(make_run(folder, tiny_sd1, steps=6))
    sink = ListSink()
    TrainingData.load_batch = recording
    try:
        assert run_training(config, sink=sink).status == "completed"
    finally:
        TrainingData.load_batch = original
    return sink, seen, folder


@pytest.mark.slow
def test_held_out_images_never_train(split_run):
    """The trained batches (recorded at load) hold only training images; the held-out ones are
    exactly those the validation plan evaluates."""
    sink, seen, _folder = split_run
    assert sink.of(RunStarted)[0].num_images == 4          # 6 images, 2 held out
    held = {"im0.png", "im1.png", "im2.png", "im3.png", "im4.png", "im5.png"} - seen
    assert len(held) == 2 and len(seen) == 4
    assert sorted(_validation(sink)) == [2, 4, 6]
    assert any("2 image(s) held out for the validation loss" in getattr(e, "text", "") for e in sink.events)


def test_an_is_val_subset_is_held_out_whole(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=2)
    meta = json.loads((tmp_path / "meta.json").read_text())
    names = sorted(meta)
    (tmp_path / "train.json").write_text(json.dumps({k: meta[k] for k in names[:4]}))
    (tmp_path / "val.json").write_text(json.dumps({k: meta[k] for k in names[4:]}))
    text = config.read_text().replace('metadata_file = "meta.json"', 'metadata_file = "train.json"')
    text = text.replace("[train]\n", "[train]\nvalidate_every_n_steps = 1\n", 1)
    text += '  [[datasets.subsets]]\n  image_dir = "images"\n  metadata_file = "val.json"\n  is_val = true\n'
    config.write_text(text)
    sink = ListSink()
    assert run_training(config, sink=sink).status == "completed"
    assert sink.of(RunStarted)[0].num_images == 4 and sorted(_validation(sink)) == [1, 2]


@pytest.mark.slow
def test_validation_is_the_same_across_runs_and_resume_and_leaves_training_alone(tmp_path, tiny_sd1, plain_run,
                                                                                 split_run):
    plain, result = plain_run(6)
    assert result.status == "completed"
    # the same held-out images without validation: the training losses of a run with it on
    off = ListSink()
    config_off = _with_split(make_run(tmp_path / "off", tiny_sd1, steps=6), train_extra="validate_every_n_epochs = 99\n")
    assert run_training(config_off, sink=off).status == "completed" and not _validation(off)

    a, _seen, a_folder = split_run        # a run of this config; c below is another, stopped and resumed
    assert sorted(_validation(a)) == [2, 4, 6]
    assert _losses(a) == _losses(off)                 # validating changes nothing training draws
    assert _losses(a) != _losses(plain)               # (holding out images does)
    # c's figures come from another run: its step 2 before the stop, 4 and 6 after the resume
    first = ListSink()
    control = RunControl()
    split = _with_split(make_run(tmp_path / "c", tiny_sd1, steps=6))
    from test_train_engine import stop_at

    assert run_training(split, sink=FanOut([first, stop_at(control, 3)]), control=control).status == "stopped"
    second = ListSink()
    assert run_training(split, sink=second, resume="latest").status == "completed"
    assert {**_validation(first), **_validation(second)} == _validation(a)   # bit-for-bit
    assert {**_losses(first), **_losses(second)} == _losses(a)
    logged = [json.loads(line) for line in (a_folder / "runs" / "t" / "events.jsonl").read_text().splitlines()]
    rows = [e for e in logged if e["event"] == "validation"]
    assert [(e["step"], e["figures"]["loss"]) for e in rows] == sorted(_validation(a).items())


def test_the_figure_moves_with_the_weights_and_comes_every_epoch_by_default(tmp_path, tiny_sd1):
    config = _with_split(make_run(tmp_path, tiny_sd1, steps=6), train_extra="")
    sink = ListSink()
    assert run_training(config, sink=sink).status == "completed"
    figures = _validation(sink)
    per_epoch = sink.of(RunStarted)[0].steps_per_epoch
    assert sorted(figures) == list(range(per_epoch, 7, per_epoch)) and len(figures) >= 2
    assert len(set(figures.values())) == len(figures) and all(v > 0 for v in figures.values())
    epochs = [e.epoch for e in sink.of(ValidationMetrics)]
    assert epochs == list(range(1, len(figures) + 1))


def test_max_validation_steps_limits_the_batches(tmp_path, tiny_sd1):
    from engine.train import validation

    evaluated = []
    original = validation._batch_losses

    def counting(parts, batch, refs, seed, timesteps):
        evaluated.append((refs, tuple(timesteps)))
        return original(parts, batch, refs, seed, timesteps)

    config = _with_split(make_run(tmp_path, tiny_sd1, steps=1), train_extra="validate_every_n_steps = 1\n"
                         "max_validation_steps = 1\n", split="validation_split = 0.5")
    validation._batch_losses = counting
    try:
        assert run_training(config, sink=ListSink()).status == "completed"
    finally:
        validation._batch_losses = original
    assert len(evaluated) == 1 and evaluated[0][1] == (200, 400, 600, 800)


def test_from_kohya_maps_the_validation_and_masked_loss_options():
    import shlex

    from engine.kohya.convert import from_command

    conversion = from_command(shlex.split(
        "accelerate launch fine_tune.py --pretrained_model_name_or_path=m.safetensors --in_json meta.json "
        "--train_data_dir=imgs --masked_loss --conditioning_data_dir=masks --validation_split=0.1 "
        "--validation_seed=3 --validate_every_n_steps=50 --validate_every_n_epochs 2 --max_validation_steps=4"))
    doc = conversion.document
    assert not conversion.refused, [(r.option, r.refused) for r in conversion.refused]
    assert doc["train"] == {"masked_loss": True, "validate_every_n_steps": 50, "validate_every_n_epochs": 2,
                            "max_validation_steps": 4}
    assert doc["general"] == {"validation_split": 0.1, "validation_seed": 3}
    assert doc["datasets"][0]["subsets"][0]["conditioning_data_dir"] == "masks"

"""The schedule: the one place a run's steps and epochs are resolved."""

from types import SimpleNamespace

import pytest

from engine.train.schedule import resolve_schedule


def train(steps=1600, epochs=None, accum=1):
    return SimpleNamespace(max_train_steps=steps, max_train_epochs=epochs, gradient_accumulation_steps=accum)


def test_steps_are_the_total_and_epochs_round_up():
    s = resolve_schedule(train(steps=10), batches_per_epoch=6)
    assert (s.batches_per_epoch, s.steps_per_epoch, s.total_steps, s.total_epochs) == (6, 6, 10, 2)


def test_epochs_win_over_steps_and_count_accumulation():
    s = resolve_schedule(train(steps=5, epochs=3, accum=2), batches_per_epoch=7)
    # 7 global batches (every process takes a part of each); 4 optimizer steps per epoch
    assert (s.batches_per_epoch, s.steps_per_epoch, s.total_steps, s.total_epochs) == (7, 4, 12, 3)


def test_a_dataset_without_batches_is_refused():
    with pytest.raises(ValueError, match="no batches"):
        resolve_schedule(train(), batches_per_epoch=0)


def test_the_data_pipeline_takes_the_total_from_the_schedule(tmp_path, tiny_sd1):
    """A fractional token_warmup_step is a ratio of the schedule's total, not of a count the
    data pipeline works out itself."""
    from train_helpers import make_run

    from engine.config.run_toml import load_run_file
    from engine.data.pipeline import TrainingData

    config, _doc, _ = load_run_file(make_run(tmp_path, tiny_sd1, steps=4))
    config.train.max_train_epochs = 2
    data = TrainingData.from_config(config, log=lambda text: None)
    schedule = resolve_schedule(config.train, data.batches_per_epoch())
    data.use_schedule(schedule.total_steps)
    assert data.max_train_steps == schedule.total_steps == 2 * schedule.steps_per_epoch

"""The loop's step hooks: a read-only context, bench timing as a hook, tokenizing off the
training thread."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from train_helpers import make_run

from engine.bench.speed import BenchTimer, run_bench
from engine.config.run_toml import load_run_file
from engine.events import ListSink, Message, StepMetrics
from engine.train.context import StepHook
from engine.train.trainer import Trainer


class Recorder(StepHook):
    def __init__(self):
        self.steps, self.epochs = [], []

    def on_step(self, ctx):
        self.steps.append((ctx.step, ctx.event_epoch, ctx.samples, ctx.figures is not None))
        with pytest.raises(dataclasses.FrozenInstanceError):
            ctx.step = 0   # hooks read the step; they cannot move it

    def on_epoch(self, ctx):
        self.epochs.append(ctx.epoch)


def _trainer(config_path) -> Trainer:
    config, _doc, _ = load_run_file(config_path)
    trainer = Trainer(config, config_text=config_path.read_text(), sink=ListSink())
    trainer.setup()
    return trainer


def test_hooks_see_every_step_and_epoch_in_order(tmp_path, tiny_sd1):
    trainer = _trainer(make_run(tmp_path, tiny_sd1, steps=4))
    recorder, timer = Recorder(), BenchTimer(warmup=1)
    trainer.loop(trainer.standard_hooks() + [recorder, timer])
    per_epoch = trainer.parts.schedule.steps_per_epoch
    assert [s for s, *_ in recorder.steps] == [1, 2, 3, 4]
    assert all(logged for *_, logged in recorder.steps)            # logging.every_n_steps = 1
    assert recorder.epochs == list(range(1, 4 // per_epoch + 1))
    assert timer.samples == sum(samples for step, _e, samples, _l in recorder.steps if step > 1)
    assert len(trainer.sink.of(StepMetrics)) == 4


def test_bench_times_the_real_loop_without_patching_the_trainer(tmp_path, tiny_sd1):
    methods = dict(vars(Trainer))
    result = run_bench(make_run(tmp_path, tiny_sd1, steps=4), steps=2, warmup=1)
    assert dict(vars(Trainer)) == methods
    assert result["steps"] == 2 and result["engine_steps_per_s"] > 0 and result["bare_steps_per_s"] > 0
    per_step = result["engine_samples_per_s"] / result["engine_steps_per_s"]
    assert per_step == pytest.approx(round(per_step))   # whole batches were counted


def test_captions_reach_the_training_thread_tokenized(tmp_path, tiny_sd1, monkeypatch):
    from engine.models.text_encoding import PromptEncoder

    threads, seen = [], []
    tokenize = PromptEncoder.tokenize

    def recording(self, captions):
        threads.append(threading.current_thread().name)
        return tokenize(self, captions)

    compute = Trainer.compute_loss

    def checking(self, batch, generator):
        seen.append(batch.tokens is not None)
        return compute(self, batch, generator)

    monkeypatch.setattr(PromptEncoder, "tokenize", recording)
    monkeypatch.setattr(Trainer, "compute_loss", checking)
    trainer = _trainer(make_run(tmp_path, tiny_sd1, steps=4))
    trainer.run()
    assert seen == [True] * 4                           # the loop never tokenizes a batch itself
    assert any(name.startswith("sdft-batches") for name in threads)   # the next step's, while this one trained


def test_a_message_from_the_loading_thread_waits_for_the_training_thread(tmp_path, tiny_sd1):
    trainer = _trainer(make_run(tmp_path, tiny_sd1, steps=1))
    before = len(trainer.sink.events)
    worker = threading.Thread(target=trainer.say, args=("from the loader", "warning"))
    worker.start()
    worker.join()
    assert len(trainer.sink.events) == before
    trainer.say.flush()
    last = trainer.sink.events[-1]
    assert isinstance(last, Message) and (last.level, last.text) == ("warning", "from the loader")

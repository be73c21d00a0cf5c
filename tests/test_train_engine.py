"""The training engine end to end on tiny models: events, saves, stop, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import make_broken_model, make_run

from engine.config.problems import ConfigError
from engine.control import RunControl
from engine.events import CallbackSink, FanOut, ListSink, ModelSaved, RunFinished, RunStarted, StepMetrics
from engine.runner import run_training


def losses(sink: ListSink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of(StepMetrics)}


def stop_at(control: RunControl, step: int):
    def on_event(event):
        if isinstance(event, StepMetrics) and event.step == step:
            control.request_stop("test stop")
    return CallbackSink(on_event)


def test_run_emits_events_and_saves_a_loadable_model(plain_run):
    sink, result = plain_run(3)   # the helper's plain run file, 3 steps: only read here
    assert result.status == "completed", result.message
    kinds = [e.kind for e in sink.events]
    assert kinds.index("run_started") < kinds.index("step") < kinds.index("run_finished")
    assert [e.step for e in sink.of(StepMetrics)] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in sink.of(StepMetrics))
    started = sink.of(RunStarted)[0]
    assert started.total_steps == 3 and started.num_images == 6
    saved = sink.of(ModelSaved)
    assert saved and saved[-1].path.endswith("t.safetensors")
    from safetensors.torch import load_file

    tensors = load_file(saved[-1].path)
    assert any(k.startswith("model.diffusion_model.") for k in tensors)
    run_dir = Path(result.run_dir)
    assert run_dir.parent.name == "runs" and run_dir.name == "t"
    assert (run_dir / "events.jsonl").is_file() and (run_dir / "config.toml").is_file()
    assert "seed = 7" in (run_dir / "config.toml").read_text()


def test_training_changes_the_unet(tiny_sd1, plain_run):
    from engine.models.load import load_model

    _sink, result = plain_run(2)
    before = load_model(str(tiny_sd1)).unet.state_dict()
    after = load_model(result.model_path).unet.state_dict()
    key = "conv_in.weight"
    assert not torch.allclose(before[key], after[key].float())


def test_stop_writes_state_and_resume_is_exact(tmp_path, tiny_sd1, plain_run):
    straight, full = plain_run(6)
    assert full.status == "completed"

    first = ListSink()
    control = RunControl()
    split = make_run(tmp_path / "b", tiny_sd1, steps=6)
    result = run_training(split, sink=FanOut([first, stop_at(control, 3)]), control=control)
    assert result.status == "stopped" and result.global_step == 3
    assert result.state_path and "step00000003" in result.state_path
    finished = first.of(RunFinished)[0]
    assert finished.status == "stopped" and finished.state_path == result.state_path

    second = ListSink()
    resumed = run_training(split, sink=second, resume="latest")
    assert resumed.status == "completed" and resumed.global_step == 6
    assert second.of(RunStarted)[0].start_step == 3
    combined = {**losses(first), **losses(second)}
    assert combined == losses(straight)           # bit-for-bit, every step


def test_resume_refuses_changed_training_options(tmp_path, tiny_sd1):
    control = RunControl()
    config = make_run(tmp_path, tiny_sd1, steps=4)
    run_training(config, sink=stop_at(control, 1), control=control)
    changed = make_run(tmp_path, tiny_sd1, steps=4, optimizer_extra='lr_scheduler = "cosine"')
    with pytest.raises(ConfigError) as refused:   # the check before training refuses it (exit 2), as --check does
        run_training(changed, sink=ListSink(), resume="latest")
    assert "training options" in str(refused.value) and "--allow-changed" in str(refused.value)


def test_failure_is_reported_with_log(tmp_path, tiny_sd1):
    config = make_run(tmp_path, make_broken_model(tiny_sd1, tmp_path), steps=2)
    sink = ListSink()
    result = run_training(config, sink=sink)
    assert result.status == "failed"
    assert "broken-model" in result.message
    assert sink.of(RunFinished)[0].status == "failed"
    assert result.log_path and "Traceback" in open(result.log_path).read()


@pytest.mark.parametrize("extra", [
    'loss_type = "huber"\nmin_snr_gamma = 5.0\nnoise_offset = 0.05\nmultires_noise_iterations = 2\nip_noise_gamma = 0.1',
    "train_text_encoder = true\nstop_text_encoder_training = 1\nema = true\nema_decay = 0.9",
])
def test_recipe_options_train(tmp_path, tiny_sd1, extra):
    save = "use_ema = true\n" if "ema = true" in extra else ""
    config = make_run(tmp_path, tiny_sd1, steps=2, train_extra=extra, save_extra=save)
    sink = ListSink()
    result = run_training(config, sink=sink)
    assert result.status == "completed", result.message
    assert all(e.loss == e.loss for e in sink.of(StepMetrics))     # finite, not NaN


@pytest.fixture(scope="module")
def accumulated_run(tmp_path_factory, tiny_sd1):
    """4 steps of 2 accumulated batches (background batch loading, the default), for the
    module's tests to read: (events, result)."""
    sink = ListSink()
    path = make_run(tmp_path_factory.mktemp("accumulated"), tiny_sd1, steps=4,
                    train_extra="gradient_accumulation_steps = 2")
    return sink, run_training(path, sink=sink)


def test_gradient_accumulation_counts_optimizer_steps(accumulated_run):
    sink, result = accumulated_run
    assert result.status == "completed"
    started = sink.of(RunStarted)[0]
    # 6 images in 3 buckets of 2, batch 2 -> 3 batches -> ceil(3 / 2) = 2 steps per epoch.
    assert started.steps_per_epoch == 2 and [e.step for e in sink.of(StepMetrics)] == [1, 2, 3, 4]


def test_stop_while_caching_latents_ends_quickly_as_stopped(tmp_path, tiny_sd1):
    from engine.events import PhaseProgress

    control = RunControl()

    def on_event(event):
        if isinstance(event, PhaseProgress) and event.name == "caching latents":
            control.request_stop("test stop during caching")

    sink = ListSink()
    config = make_run(tmp_path, tiny_sd1, steps=4)
    result = run_training(config, sink=FanOut([sink, CallbackSink(on_event)]), control=control)
    assert result.status == "stopped" and result.global_step == 0
    assert "before training started" in result.message
    assert not sink.of(StepMetrics) and sink.of(RunFinished)[0].status == "stopped"


def test_background_batch_loading_changes_nothing_but_time(tmp_path, tiny_sd1, accumulated_run):
    inline = ListSink()
    path = make_run(tmp_path / "inline", tiny_sd1, steps=4, train_extra="gradient_accumulation_steps = 2")
    path.write_text(path.read_text() + "\n[data]\nnum_workers = 0\n")
    run_training(path, sink=inline)
    threaded, _result = accumulated_run   # the same file with the default, background loading
    assert losses(inline) == losses(threaded) and len(losses(inline)) == 4


def test_each_micro_batch_of_each_step_has_its_own_seed():
    from engine.train.trainer import step_seed

    seeds = {step_seed(7, step, micro) for step in range(50) for micro in range(4)}
    assert len(seeds) == 50 * 4
    assert step_seed(7, 3, 0) == step_seed(7, 3, 0) != step_seed(8, 3, 0)


def test_live_encoded_subsets_train_and_resume_exactly(tmp_path, tiny_sd1):
    # random_crop makes a subset uncacheable: its latents are encoded every step, with the
    # posterior sample drawn from the step's own generator.
    extra = "random_crop = true"
    straight = ListSink()
    full = make_run(tmp_path / "a", tiny_sd1, steps=4)
    full.write_text(full.read_text().replace('metadata_file = "meta.json"', f'metadata_file = "meta.json"\n  {extra}'))
    assert run_training(full, sink=straight).status == "completed"
    from engine.events import Message

    assert any("encoded live" in m.text for m in straight.of(Message))
    control = RunControl()
    first, second = ListSink(), ListSink()
    split = make_run(tmp_path / "b", tiny_sd1, steps=4)
    split.write_text(split.read_text().replace('metadata_file = "meta.json"', f'metadata_file = "meta.json"\n  {extra}'))
    run_training(split, sink=FanOut([first, stop_at(control, 2)]), control=control)
    run_training(split, sink=second, resume="latest")
    assert {**losses(first), **losses(second)} == losses(straight)


def test_a_crash_mid_run_leaves_a_resumable_state(tmp_path, tiny_sd1, monkeypatch, plain_run):
    from engine.train.trainer import Trainer

    straight, _result = plain_run(4)

    real = Trainer.compute_loss

    def failing(self, batch, generator):
        if self.global_step == 2:
            raise RuntimeError("disk went away while reading a batch")
        return real(self, batch, generator)

    monkeypatch.setattr(Trainer, "compute_loss", failing)
    first = ListSink()
    config = make_run(tmp_path / "b", tiny_sd1, steps=4)
    result = run_training(config, sink=first)
    assert result.status == "failed" and "disk went away" in result.message
    assert result.state_path and "step00000002" in result.state_path and "--resume" in result.message
    monkeypatch.setattr(Trainer, "compute_loss", real)
    second = ListSink()
    assert run_training(config, sink=second, resume="latest").status == "completed"
    assert {**losses(first), **losses(second)} == losses(straight)


def test_state_on_stop_false_stops_without_writing_a_state(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=6)
    config.write_text(config.read_text().replace("state_on_stop = true", "state_on_stop = false"))
    control = RunControl()
    result = run_training(config, sink=stop_at(control, 2), control=control)
    assert result.status == "stopped" and result.state_path is None
    assert not (tmp_path / "runs" / "t" / "state").exists() or not any((tmp_path / "runs" / "t" / "state").iterdir())

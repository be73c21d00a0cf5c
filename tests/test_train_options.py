"""Options of the training engine change what they should (tiny models, CPU)."""

from __future__ import annotations

import torch
from train_helpers import make_run

from engine.config.run_toml import load_run_file
from engine.events import ListSink, Message, ModelSaved, SampleSaved, StepMetrics
from engine.runner import run_training
from engine.train.ema import EMA
from engine.train.trainer import Trainer


def setup_trainer(config_path) -> Trainer:
    config, _doc, _warnings = load_run_file(config_path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    return trainer


def first_losses(sink: ListSink) -> list[float]:
    return [e.loss for e in sink.of(StepMetrics)]


def test_fp16_on_cpu_becomes_bf16_with_a_message(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=1, save_extra="", train_extra="")
    config.write_text(config.read_text() + '\n[memory]\nmixed_precision = "fp16"\n')
    sink = ListSink()
    result = run_training(config, sink=sink)
    assert result.status == "completed", result.message
    assert any("bf16" in m.text for m in sink.of(Message) if m.level == "warning")


def test_full_bf16_keeps_trained_weights_in_bf16(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=1)
    config.write_text(config.read_text() + '\n[memory]\nmixed_precision = "bf16"\nfull_bf16 = true\n')
    trainer = setup_trainer(config)
    assert next(trainer.parts.components.model.unet.parameters()).dtype == torch.bfloat16
    plain = setup_trainer(make_run(tmp_path / "plain", tiny_sd1, steps=1))
    assert next(plain.parts.components.model.unet.parameters()).dtype == torch.float32


def test_gradient_checkpointing_is_enabled_and_keeps_the_loss(tmp_path, tiny_sd1, plain_run):
    base, _result = plain_run(2)
    path = make_run(tmp_path / "b", tiny_sd1, steps=2)
    path.write_text(path.read_text() + "\n[memory]\ngradient_checkpointing = true\n")
    trainer = setup_trainer(path)
    assert trainer.parts.components.model.unet.is_gradient_checkpointing
    checkpointed = ListSink()
    run_training(path, sink=checkpointed)
    torch.testing.assert_close(torch.tensor(first_losses(checkpointed)), torch.tensor(first_losses(base)))


def test_ema_update_and_swap():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([("p", p)], decay=0.5)
    with torch.no_grad():
        p.fill_(2.0)
    ema.update(step=1)   # the warm-up's first update takes the trained weights as they are
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 2.0))
    with torch.no_grad():
        p.fill_(4.0)
    ema.update(step=3)   # by the third update the warm-up passed ema_decay: the cap applies
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 3.0))
    ema.load_state_dict({"p": torch.full((2,), 1.0)})
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.full((2,), 1.0))
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.full((2,), 4.0))


def test_saving_from_ema_weights_differs_from_live_weights(tmp_path, tiny_sd1):
    from safetensors.torch import load_file

    def final_weights(folder, use_ema):
        # EMA does not change training, only what is saved: the live run needs none
        extra = "ema = true\nema_decay = 0.5" if use_ema else ""
        path = make_run(folder, tiny_sd1, steps=2, train_extra=extra,
                        save_extra=f"use_ema = {'true' if use_ema else 'false'}\nprecision = \"float\"")
        result = run_training(path, sink=ListSink())
        return load_file(result.model_path)["model.diffusion_model.input_blocks.0.0.weight"]

    assert not torch.equal(final_weights(tmp_path / "live", False), final_weights(tmp_path / "ema", True))


def test_save_formats_and_rotation(tmp_path, tiny_sd1):
    from engine.models.load import load_model

    path = make_run(tmp_path, tiny_sd1, steps=3, save_extra='format = "ckpt"\nevery_n_steps = 1\nlast_n_steps = 1')
    sink = ListSink()
    result = run_training(path, sink=sink)
    assert result.model_path.endswith("t.ckpt")
    checkpoint = torch.load(result.model_path, weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 3 and "state_dict" in checkpoint
    files = sorted(p.name for p in (tmp_path / "runs" / "t" / "checkpoints").iterdir())
    assert files == ["t-step00000002.ckpt", "t.ckpt"]            # step 1 rotated away
    assert [e.step for e in sink.of(ModelSaved) if e.what == "model"] == [1, 2, 3]

    folder_run = make_run(tmp_path / "d", tiny_sd1, steps=1, save_extra='format = "diffusers_safetensors"')
    model_dir = run_training(folder_run, sink=ListSink()).model_path
    assert load_model(model_dir).unet is not None


def test_samples_do_not_change_training(tmp_path, tiny_sd1, plain_run):
    plain, _result = plain_run(3)
    path = make_run(tmp_path / "b", tiny_sd1, steps=3)
    path.write_text(path.read_text() + '\n[sample]\nevery_n_steps = 2\nprompts = ["picture --w 64 --h 64 --s 2 --d 3 --n blurry"]\n')
    sampled = ListSink()
    result = run_training(path, sink=sampled)
    assert result.status == "completed", result.message
    samples = sampled.of(SampleSaved)
    assert [s.step for s in samples] == [2] and samples[0].prompt == "picture"
    assert (tmp_path / "b" / "runs" / "t" / "samples").is_dir()
    from PIL import Image

    assert Image.open(samples[0].path).size == (64, 64)
    assert first_losses(sampled) == first_losses(plain)           # RNG saved and restored


def test_v_prediction_sd2_with_225_tokens_and_weighted_captions(tmp_path, tiny_sd2):
    path = make_run(tmp_path, tiny_sd2, steps=2, train_extra="weighted_captions = true\nmin_snr_gamma = 5.0")
    path.write_text(path.read_text().replace("max_token_length = 150", "max_token_length = 225")
                    .replace("clip_skip = 2", "clip_skip = 1"))
    trainer = setup_trainer(path)
    assert trainer.parts.components.noise.v_prediction and trainer.parts.components.model.v2
    assert trainer.parts.components.prompt_encoder.embedding_length == 227
    result = run_training(path, sink=ListSink())
    assert result.status == "completed", result.message


def test_text_encoder_trains_with_its_own_learning_rate(tmp_path, tiny_sd1):
    path = make_run(tmp_path, tiny_sd1, steps=1, train_extra="train_text_encoder = true",
                    optimizer_extra="learning_rate_te = 5e-5")
    trainer = setup_trainer(path)
    rates = sorted(group["lr"] for group in trainer.parts.bundle.optimizer.param_groups)
    assert rates == [5e-5, 1e-4]
    assert any(p.requires_grad for p in trainer.parts.components.model.text_encoder.parameters())


def test_zero_terminal_snr_model_saves_a_rescaled_scheduler(tmp_path, tiny_sd2):
    import json

    path = make_run(tmp_path, tiny_sd2, steps=1, train_extra="zero_terminal_snr = true",
                    save_extra='format = "diffusers_safetensors"')
    result = run_training(path, sink=ListSink())
    assert result.status == "completed", result.message
    from pathlib import Path

    scheduler = json.loads((Path(result.model_path) / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["rescale_betas_zero_snr"] is True and scheduler["prediction_type"] == "v_prediction"

"""SDXL through sdft's one loop on a tiny SDXL folder: it trains, saves through the adapter,
resumes bit for bit; each text encoder trains or stays frozen on its own rate; text-encoder
outputs cached in memory or on disk; what SDXL (or SD) cannot take is refused with the reason."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image
from train_helpers import make_run

from engine.config.problems import ConfigError
from engine.control import RunControl
from engine.events import CallbackSink, FanOut, ListSink, Message, StepMetrics
from engine.runner import run_training


@pytest.fixture
def tiny_sdxl(tiny_sdxl_folder):
    """The tiny SDXL folder, saved once per worker (tests/conftest.py); runs only read it."""
    return tiny_sdxl_folder(1)


def sdxl_run(folder, model, *, steps=4, train_extra="", optimizer_extra="", cache_extra="", shuffle=False,
             save_extra=""):
    """train_helpers' run file for SDXL: no clip skip (SDXL reads fixed layers)."""
    path = make_run(folder, model, steps=steps, train_extra=train_extra, optimizer_extra=optimizer_extra,
                    save_extra=save_extra)
    text = path.read_text().replace("clip_skip = 2\n", "")
    if not shuffle:
        text = text.replace("shuffle_caption = true\n", "")
    if cache_extra:
        text = text.replace('latents = "disk"\n', f'latents = "disk"\n{cache_extra}\n')
    path.write_text(text)
    return path


def losses(sink: ListSink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of(StepMetrics)}


def stop_at(control: RunControl, step: int):
    return CallbackSink(lambda e: isinstance(e, StepMetrics) and e.step == step and control.request_stop("test"))


def messages(sink: ListSink) -> str:
    return "\n".join(e.text for e in sink.of(Message))


def load(path):
    from engine.families.sources import load_base

    return load_base(str(path), hash_file=False)


def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


# ------------------------------------------------------------------ training, saving, resume


@pytest.mark.slow
def test_sdxl_trains_saves_and_resumes_bit_for_bit(tmp_path, tiny_sdxl):
    """Both text encoders train with their own rates; the saved file loads as SDXL with all three
    trained parts changed; a run stopped at step 3 and resumed gives every loss of a straight run
    and the same saved model."""
    extra = dict(train_extra="train_text_encoder = true", optimizer_extra="learning_rate_te1 = 5e-5\n"
                 "learning_rate_te2 = 2e-5", steps=6, save_extra='precision = "float"')
    straight = ListSink()
    full = run_training(sdxl_run(tmp_path / "a", tiny_sdxl, **extra), sink=straight)
    assert full.status == "completed" and full.global_step == 6
    lrs = straight.of(StepMetrics)[0].lrs
    assert lrs == {"unet": 1e-4, "text_encoder": 5e-5, "text_encoder_2": 2e-5}

    base, trained = load(tiny_sdxl), load(full.model_path)
    assert trained.family == "sdxl"
    for part in ("unet", "text_encoder", "text_encoder_2"):
        assert not same(getattr(base, part), getattr(trained, part)), part
    assert same(base.vae, trained.vae)   # saved in fp32: the untrained VAE is the base's, bit for bit

    first, control = ListSink(), RunControl()
    split = sdxl_run(tmp_path / "b", tiny_sdxl, **extra)
    stopped = run_training(split, sink=FanOut([first, stop_at(control, 3)]), control=control)
    assert stopped.status == "stopped" and stopped.global_step == 3 and stopped.state_path
    second = ListSink()
    resumed = run_training(split, sink=second, resume="latest")
    assert resumed.status == "completed" and resumed.global_step == 6
    assert {**losses(first), **losses(second)} == losses(straight)
    again = load(resumed.model_path)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        assert same(getattr(trained, part), getattr(again, part)), part


def test_a_zero_rate_keeps_that_text_encoder_frozen_and_te1_keeps_its_unused_layer(tmp_path, tiny_sdxl):
    """kohya's sdxl_train.py: learning_rate_te2 = 0 trains TE1 only; TE1's last layer and final
    LayerNorm (the U-Net reads its layer 11) never change."""
    sink = ListSink()
    result = run_training(sdxl_run(tmp_path, tiny_sdxl, steps=3, train_extra="train_text_encoder = true",
                                   optimizer_extra="learning_rate_te2 = 0", save_extra='precision = "float"'),
                          sink=sink)
    assert result.status == "completed"
    assert sink.of(StepMetrics)[0].lrs == {"unet": 1e-4, "text_encoder": 1e-4}
    assert "text encoders: text_encoder train; text_encoder_2 frozen (a learning rate of 0)" in messages(sink)
    base, trained = load(tiny_sdxl), load(result.model_path)
    assert same(base.text_encoder_2, trained.text_encoder_2)
    assert not same(base.text_encoder, trained.text_encoder)
    before, after = base.text_encoder.state_dict(), trained.text_encoder.state_dict()
    last = max(int(re.search(r"layers\.(\d+)\.", k).group(1)) for k in before if ".layers." in k)
    frozen = [k for k in before if f"layers.{last}." in k or "final_layer_norm" in k]
    assert frozen and all(torch.equal(before[k], after[k].float()) for k in frozen)


# ------------------------------------------------------------------ cached text-encoder outputs


@pytest.mark.slow
def test_cached_text_outputs_train_the_same_and_resume_exactly(tmp_path, tiny_sdxl):
    plain = ListSink()
    assert run_training(sdxl_run(tmp_path / "none", tiny_sdxl), sink=plain).status == "completed"
    memory = ListSink()
    assert run_training(sdxl_run(tmp_path / "mem", tiny_sdxl, cache_extra='text_encoder_outputs = "memory"'),
                        sink=memory).status == "completed"
    assert "text-encoder outputs cached in memory: 6 caption(s), 6 encoded now" in messages(memory)
    a, b = losses(plain), losses(memory)
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) < 1e-5 for s in a)

    disk = sdxl_run(tmp_path / "disk", tiny_sdxl, steps=6, cache_extra='text_encoder_outputs = "disk"')
    straight = ListSink()
    assert run_training(disk, sink=straight).status == "completed"
    assert "6 caption(s), 6 encoded now" in messages(straight)
    entries = sorted((tmp_path / "disk" / "runs" / ".latent-cache" / "text-encoder-outputs").glob("??/*.safetensors"))
    assert len(entries) == 6
    from safetensors.torch import load_file

    assert set(load_file(str(entries[0]))) == {"hidden_state1", "hidden_state2", "pool2"}   # kohya's names

    control, first = RunControl(), ListSink()
    split = sdxl_run(tmp_path / "disk", tiny_sdxl, steps=6, cache_extra='text_encoder_outputs = "disk"')
    split.write_text(split.read_text().replace('output_name = "t"', 'output_name = "u"'))
    assert run_training(split, sink=FanOut([first, stop_at(control, 3)]), control=control).status == "stopped"
    assert "6 caption(s), 0 encoded now" in messages(first)   # the first run's entries are reused
    second = ListSink()
    assert run_training(split, sink=second, resume="latest").status == "completed"
    assert {**losses(first), **losses(second)} == losses(straight)


def test_caption_dropout_caches_the_empty_caption_too(tmp_path, tiny_sdxl):
    """A dropped caption is the empty one: cached beside the images' own, so every draw finds its
    outputs (a caption the cache lacks stops the step)."""
    path = sdxl_run(tmp_path, tiny_sdxl, steps=6, cache_extra='text_encoder_outputs = "memory"')
    path.write_text(path.read_text().replace('metadata_file = "meta.json"',
                                             'metadata_file = "meta.json"\n  caption_dropout_rate = 0.5'))
    sink = ListSink()
    assert run_training(path, sink=sink).status == "completed"
    assert "7 caption(s), 7 encoded now" in messages(sink)


# ------------------------------------------------------------------ refusals


def problems_of(path) -> list:
    from engine.preflight.checks import check_run_file

    _config, found = check_run_file(path)
    return [p for p in found if p.severity == "error"]


@pytest.mark.parametrize("change,key,says", [
    (dict(train_extra="train_text_encoder = true", cache_extra='text_encoder_outputs = "memory"'),
     "cache.text_encoder_outputs", "a text encoder that trains"),
    (dict(cache_extra='text_encoder_outputs = "disk"', shuffle=True), "cache.text_encoder_outputs",
     "shuffle_caption"),
    (dict(train_extra="train_text_encoder = true", optimizer_extra="learning_rate_te = 1e-5"),
     "optimizer.learning_rate_te", "two text encoders"),
    (dict(train_extra='mode = "hypernetwork"'), "train.mode", "hypernetworks"),
])
def test_check_refuses_what_sdxl_cannot_take(tmp_path, tiny_sdxl, change, key, says):
    errors = problems_of(sdxl_run(tmp_path, tiny_sdxl, **change))
    assert [p.key for p in errors] == [key] and says in errors[0].message, errors


def test_check_passes_for_sdxl_and_both_encoders_frozen_may_cache(tmp_path, tiny_sdxl):
    assert problems_of(sdxl_run(tmp_path, tiny_sdxl)) == []
    both_zero = sdxl_run(tmp_path / "z", tiny_sdxl, train_extra="train_text_encoder = true",
                         optimizer_extra="learning_rate_te1 = 0\nlearning_rate_te2 = 0",
                         cache_extra='text_encoder_outputs = "memory"')
    assert problems_of(both_zero) == []


@pytest.mark.parametrize("optimizer_extra,cache_extra,key", [
    ("learning_rate_te1 = 1e-5", "", "optimizer.learning_rate_te1"),
    ("learning_rate_te2 = 1e-5", "", "optimizer.learning_rate_te2"),
    ("", 'text_encoder_outputs = "memory"', "cache.text_encoder_outputs"),
    (f"block_lr = {[1e-6] * 23}", "", "optimizer.block_lr"),
])
def test_sd_refuses_sdxl_keys(tmp_path, tiny_sd1, optimizer_extra, cache_extra, key):
    path = make_run(tmp_path, tiny_sd1, train_extra="train_text_encoder = true", optimizer_extra=optimizer_extra)
    if cache_extra:
        path.write_text(path.read_text().replace('latents = "disk"\n', f'latents = "disk"\n{cache_extra}\n'))
    errors = problems_of(path)
    assert [p.key for p in errors] == [key], errors
    if key.startswith("optimizer.learning_rate"):
        assert "learning_rate_te" in errors[0].hint
    with pytest.raises(ConfigError):
        run_training(path, sink=ListSink())


def test_sdxl_defaults_to_1024_pixel_buckets(tmp_path, tiny_sdxl):
    """Without a resolution the family's native side decides, as kohya's defaults for SDXL."""
    from engine.preflight.model import look_at_model

    probe = look_at_model(str(tiny_sdxl))
    assert probe.family == "sdxl" and probe.default_side == 1024 and probe.error is None
    assert probe.label().startswith("SDXL, epsilon")

    from types import SimpleNamespace

    from engine.config.run_toml import load_run_file
    from engine.data.pipeline import TrainingData
    from engine.families import family
    from engine.train.components import default_side

    path = sdxl_run(tmp_path, tiny_sdxl)
    path.write_text(path.read_text().replace("resolution = 64\n", "").replace("min_bucket_reso = 64\n", "")
                    .replace("max_bucket_reso = 128\n", ""))
    side = default_side(load(tiny_sdxl), SimpleNamespace(v_prediction=False))
    data = TrainingData.from_config(load_run_file(path)[0], default_resolution=(side, side), family=family("sdxl"),
                                    log=lambda s: None)
    settings = data.settings[0]
    assert settings.resolution == (1024, 1024)
    assert (settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps) == (256, 1024, 64)
    assert {(1024, 1024), (256, 1024), (1024, 256)} <= set(settings.bucket_list())


# ------------------------------------------------------------------ samples


def test_sdxl_samples_equal_diffusers_own_pipeline():
    """guided_latents through the SDXL adapter (the training encoder's states and pooled output)
    gives the latents StableDiffusionXLPipeline makes from the same prompts itself (75 tokens,
    where kohya's encoding and diffusers' agree)."""
    from diffusers import StableDiffusionXLPipeline
    from sdxl_helpers import tiny_sdxl_parts

    from engine.families import family
    from engine.families.sdxl.text_encoding import SdxlPromptEncoder
    from engine.train.sampling import guided_latents

    parts = tiny_sdxl_parts(1)   # sampling only reads the parts
    pipe = StableDiffusionXLPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    encoder = SdxlPromptEncoder(parts["text_encoder"], parts["text_encoder_2"], tokenizer=parts["tokenizer"])
    common = dict(width=64, height=64, guidance_scale=5.0, output_type="latent")
    ours = guided_latents(pipe, encoder, ["a photo of a cat"], ["blurry"], device="cpu", width=64, height=64,
                          steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(1),
                          family=family("sdxl"))
    theirs = pipe(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=3,
                  generator=torch.Generator().manual_seed(1), **common).images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)   # one encoder call vs two: float noise


def test_an_sdxl_run_samples_with_ema_and_validation(tmp_path, tiny_sdxl):
    """Samples through the SDXL pipeline, the EMA and the validation loss in one SDXL run."""
    from engine.events import SampleSaved, ValidationMetrics

    run = sdxl_run(tmp_path, tiny_sdxl, steps=4, train_extra="ema = true\nvalidate_every_n_steps = 2")
    # 64 px: at SDXL's default side (1024) decoding the one sample took most of the test's time
    text = run.read_text().replace("[general]", '[sample]\nprompts = ["a red picture --w 64 --h 64"]\n'
                                   'every_n_steps = 4\nsteps = 2\n\n[general]')
    run.write_text(text.replace("batch_size = 2", "batch_size = 2\nvalidation_split = 0.34"))
    sink = ListSink()
    result = run_training(run, sink=sink)
    assert result.status == "completed", result.message
    assert [e.step for e in sink.of(SampleSaved)] == [4]
    with Image.open(sink.of(SampleSaved)[0].path) as image:
        assert image.size == (64, 64)
    assert [e.step for e in sink.of(ValidationMetrics)] == [2, 4]
    assert all(e.figures["loss"] > 0 for e in sink.of(ValidationMetrics))


def test_masked_loss_on_sdxl(tmp_path, tiny_sdxl):
    """An opaque alpha mask trains exactly as no mask; a half-transparent one changes the loss."""
    from test_masked_loss import _masked_dataset

    def run(folder, alpha):
        path = sdxl_run(folder, tiny_sdxl, steps=2, train_extra="masked_loss = true" if alpha else "")
        if alpha:
            _masked_dataset(folder, alpha_values=alpha)
            path.write_text(path.read_text().replace('metadata_file = "meta.json"\n',
                                                     'metadata_file = "meta.json"\n  alpha_mask = true\n'))
        sink = ListSink()
        assert run_training(path, sink=sink).status == "completed"
        return losses(sink)

    plain = run(tmp_path / "plain", None)
    assert run(tmp_path / "opaque", (255, 255)) == plain
    assert run(tmp_path / "half", (0, 255)) != plain

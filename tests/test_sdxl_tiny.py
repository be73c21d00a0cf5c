"""The tiny random SDXL kit: a diffusers folder StableDiffusionXLPipeline loads offline."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def tiny_sdxl(tiny_sdxl_folder):
    """save_tiny_sdxl_model's folder, saved once per worker (tests/conftest.py)."""
    return tiny_sdxl_folder(1)


def test_folder_names_the_sdxl_pipeline_and_its_seven_parts(tiny_sdxl):
    index = json.loads((tiny_sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (tiny_sdxl / part).is_dir(), part
    # both tokenizers also in the vocab.json / merges.txt form older stacks read
    for part in ("tokenizer", "tokenizer_2"):
        assert (tiny_sdxl / part / "vocab.json").is_file() and (tiny_sdxl / part / "merges.txt").is_file()


def test_pipeline_loads_offline_with_sdxl_s_shape(tiny_sdxl):
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    te1, te2, unet = pipe.text_encoder, pipe.text_encoder_2, pipe.unet
    assert type(te2).__name__ == "CLIPTextModelWithProjection"
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.cross_attention_dim == te1.config.hidden_size + te2.config.hidden_size
    assert unet.config.projection_class_embeddings_input_dim == (
        te2.config.projection_dim + 6 * unet.config.addition_time_embed_dim
    )
    assert te1.config.num_hidden_layers == 12  # kohya's hidden_states[11] is the penultimate
    assert pipe.vae.config.scaling_factor == 0.13025
    # kohya's two tokenizers: the same BPE, the first pads with EOS, the second with "!" (id 0)
    assert pipe.tokenizer.pad_token_id == pipe.tokenizer.eos_token_id == 49407
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer_2.pad_token_id == 0
    assert pipe.tokenizer("a photo of a cat").input_ids == pipe.tokenizer_2("a photo of a cat").input_ids

    # The pipeline encodes, denoises and decodes end to end.
    image = pipe(
        "a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_seed_decides_the_weights():
    from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components

    a = build_tiny_sdxl_components(TinySdxlSpec(seed=1))["unet"].conv_in.weight
    b = build_tiny_sdxl_components(TinySdxlSpec(seed=1))["unet"].conv_in.weight
    c = build_tiny_sdxl_components(TinySdxlSpec(seed=2))["unet"].conv_in.weight
    assert a.equal(b) and not a.equal(c)


def test_v_prediction_flavour_is_in_the_scheduler():
    from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components

    scheduler = build_tiny_sdxl_components(TinySdxlSpec(v_prediction=True))["scheduler"]
    assert scheduler.config.prediction_type == "v_prediction"

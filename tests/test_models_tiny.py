"""The tiny-model kit: SD's layout at toy widths, saved and reloaded as a diffusers folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from engine.models.tiny import TinySpec, build_tiny_components, save_tiny_model


@pytest.mark.parametrize("flavour", ["sd1", "sd2"])
def test_tiny_model_saves_reloads_and_keeps_sd_shapes(tmp_path, flavour):
    from diffusers import StableDiffusionPipeline

    folder = save_tiny_model(tmp_path / flavour, TinySpec(flavour, seed=3))
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    again = build_tiny_components(TinySpec(flavour, seed=3))
    for name, module in pipe.unet.state_dict().items():
        assert torch.equal(module, again["unet"].state_dict()[name])      # seeded and saved exactly

    unet = pipe.unet.config
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet.layers_per_block == 2 and len(pipe.vae.config.block_out_channels) == 4
    with torch.no_grad():
        latents = pipe.vae.encode(torch.zeros(1, 3, 64, 96)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 12)                                  # image / 8, 4 channels
    assert pipe.text_encoder.config.num_hidden_layers == 2

    v2 = flavour == "sd2"
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if v2 else "epsilon")
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert unet.use_linear_projection is v2
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=6).input_ids
    assert ids == [49406, 320, 2368, 49407] + ([0, 0] if v2 else [49407, 49407])


def test_packaging_never_pins_torch():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    torch_req = re.search(r'"torch([^"]*)"', text).group(1)
    assert torch_req.startswith(">=") and "<" not in torch_req and "==" not in torch_req

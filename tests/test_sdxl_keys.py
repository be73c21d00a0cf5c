"""SDXL single-file keys: kohya's layout at full size, bit-exact round trips, diffusers' loader."""

from __future__ import annotations

import re

import pytest
import torch
from sdxl_helpers import tiny_sdxl_parts

from engine.families.sdxl.keys import (
    TE2_PREFIX,
    ConversionError,
    diffusers_to_single_file,
    single_file_to_diffusers,
    unet_key_map,
)

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _state_dicts(seed: int) -> dict:
    parts = tiny_sdxl_parts(seed)   # built once per process; the tests only read the tensors
    return {name: parts[name].state_dict() for name in PARTS}


def _bare(sd):
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny_sds():
    return _state_dicts(seed=1)


def _single_file(sds, logit_scale=None):
    return diffusers_to_single_file(sds["unet"], sds["vae"], sds["text_encoder"], sds["text_encoder_2"],
                                    logit_scale=logit_scale)


def test_round_trip_is_bit_exact(tiny_sds):
    scale = torch.tensor(4.6052)
    sf = _single_file(tiny_sds, logit_scale=scale)
    back = single_file_to_diffusers(sf, unet_keys=tiny_sds["unet"].keys(), vae_state=tiny_sds["vae"],
                                    te2_keys=tiny_sds["text_encoder_2"].keys())
    for name, got in (("unet", back.unet), ("vae", back.vae), ("text_encoder", back.text_encoder),
                      ("text_encoder_2", back.text_encoder_2)):
        want = _bare(tiny_sds[name]) if name.startswith("text") else tiny_sds[name]
        assert set(got) == set(want), name
        for key in want:
            assert got[key].shape == want[key].shape and torch.equal(got[key], want[key]), (name, key)
    assert back.logit_scale is scale and back.other == {}


def test_tiny_file_has_kohya_s_names_and_layouts(tiny_sds):
    sf = _single_file(tiny_sds)
    te2 = _bare(tiny_sds["text_encoder_2"])
    unet = tiny_sds["unet"]
    # pooled-text + size embedding, and SDXL's upsampler slot after an attention layer
    assert torch.equal(sf["model.diffusion_model.label_emb.0.0.weight"], unet["add_embedding.linear_1.weight"])
    assert torch.equal(sf["model.diffusion_model.label_emb.0.2.bias"], unet["add_embedding.linear_2.bias"])
    assert torch.equal(sf["model.diffusion_model.output_blocks.2.2.conv.weight"], unet["up_blocks.0.upsamplers.0.conv.weight"])
    assert "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight" in sf
    # TE1 keeps transformers' names under text_model.
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.bias" in sf
    # TE2: fused q/k/v and OpenCLIP's (width, projection) text projection
    fused = sf[TE2_PREFIX + "transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(fused, torch.cat([te2[f"encoder.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]))
    assert torch.equal(sf[TE2_PREFIX + "text_projection"], te2["text_projection.weight"].t())
    assert TE2_PREFIX + "logit_scale" not in sf   # kohya writes it only when the source had one
    # VAE attention as 1x1 convs
    assert sf["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    assert not any("position_ids" in k for k in sf)


def test_missing_and_unexpected_tensors_are_named(tiny_sds):
    sf = _single_file(tiny_sds)
    keys = dict(unet_keys=tiny_sds["unet"].keys(), vae_state=tiny_sds["vae"], te2_keys=tiny_sds["text_encoder_2"].keys())
    broken = dict(sf)
    del broken["model.diffusion_model.label_emb.0.0.weight"]
    with pytest.raises(ConversionError, match=r"label_emb\.0\.0\.weight"):
        single_file_to_diffusers(broken, **keys)
    broken = dict(sf)
    del broken[TE2_PREFIX + "text_projection"]
    with pytest.raises(ConversionError, match="text_projection"):
        single_file_to_diffusers(broken, **keys)
    broken = dict(sf, **{TE2_PREFIX + "transformer.resblocks.7.ln_1.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match=r"resblocks\.7\.ln_1"):
        single_file_to_diffusers(broken, **keys)
    with pytest.raises(ConversionError, match="not an SDXL single file"):
        single_file_to_diffusers({k: v for k, v in sf.items() if not k.startswith("conditioner.")}, **keys)


# ------------------------------------------------------------------ full size, on meta


def _kohya_unet_prefixes():
    """(LDM, diffusers) prefix pairs of kohya's make_unet_conversion_map for SDXL's U-Net,
    written from its published table: 3 blocks, 2 resnets down and 3 up, upsampler slot 2."""
    pairs = [("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
             ("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
             ("middle_block.1.", "mid_block.attentions.0.")]
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    for i in range(3):
        for j in range(2):
            pairs += [(f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."),
                      (f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")]
        for j in range(3):
            pairs += [(f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."),
                      (f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}.")]
        pairs += [(f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."),
                  (f"output_blocks.{3 * i + 2}.2.", f"up_blocks.{i}.upsamplers.0.")]
    return pairs


_RESNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
           ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut.")]


def _kohya_unet_name(key: str) -> str:
    for ldm, hf in sorted(_kohya_unet_prefixes(), key=lambda p: -len(p[1])):
        if key.startswith(hf):
            rest = key[len(hf):]
            if ".resnets." in hf:
                for ldm_r, hf_r in _RESNET:
                    if rest.startswith(hf_r):
                        rest = ldm_r + rest[len(hf_r):]
            return "model.diffusion_model." + ldm + rest
    raise AssertionError(f"kohya's table has no place for {key}")


def test_full_size_unet_keys_follow_kohya_s_table():
    from diffusers import UNet2DConditionModel

    config = dict(
        addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
        block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
        use_linear_projection=True,
    )
    with torch.device("meta"):
        keys = list(UNet2DConditionModel(**config).state_dict())
    ours = unet_key_map(keys)
    assert len(keys) == 1680 and len(set(ours.values())) == len(keys)
    for key in keys:
        assert ours[key] == _kohya_unet_name(key), key


def test_full_size_te2_keys_are_openclip_bigg_s():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from engine.families.sdxl.keys import te2_to_single_file

    config = CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                            num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
    with torch.device("meta"):
        sd = CLIPTextModelWithProjection(config).state_dict()
    sf = te2_to_single_file(sd, logit_scale=torch.empty((), device="meta"))
    per_layer = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                 "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    expected = {f"{TE2_PREFIX}transformer.resblocks.{i}.{n}" for i in range(32) for n in per_layer}
    expected |= {TE2_PREFIX + n for n in ("token_embedding.weight", "positional_embedding", "ln_final.weight",
                                          "ln_final.bias", "text_projection", "logit_scale")}
    assert set(sf) == expected
    assert sf[TE2_PREFIX + "transformer.resblocks.31.attn.in_proj_weight"].shape == (3840, 1280)
    assert all(re.match(r"conditioner\.embedders\.1\.model\.", k) for k in sf)


# ------------------------------------------------------------------ through diffusers' loader


def test_diffusers_from_single_file_loads_our_file_bit_for_bit(tmp_path, tiny_sdxl_folder):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    folder = tiny_sdxl_folder(1)
    # The file holds another seed's weights, so only the file can be where they come from.
    sds = _state_dicts(seed=2)
    save_file({k: v.contiguous() for k, v in _single_file(sds).items()}, tmp_path / "model.safetensors")
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(tmp_path / "model.safetensors"), config=str(folder), local_files_only=True
    )
    for name in PARTS:
        loaded = _bare(getattr(pipe, name).state_dict())
        want = _bare(sds[name])
        assert set(loaded) == set(want), name
        for key in want:
            assert torch.equal(loaded[key], want[key]), (name, key)

"""Models in and out: conversion round trips, diffusers interop, precision, metadata, CLI."""

from __future__ import annotations

import json
import os
import stat

import pytest

torch = pytest.importorskip("torch")

from models_helpers import assert_same_weights, read_file, save_tiny_single, tiny  # noqa: E402

FLAVOURS = ("sd1", "sd2")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("ext", ["safetensors", "ckpt"])
def test_single_file_round_trip_is_bit_exact(tmp_path, flavour, ext):
    from engine.models.load import load_model

    path = save_tiny_single(tmp_path / f"m.{ext}", flavour, fmt=ext)
    loaded = load_model(str(path))
    c = tiny(flavour)
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(c[part], getattr(loaded, part))
    head = c["unet"].config.attention_head_dim
    assert loaded.unet.config.attention_head_dim == (list(head) if isinstance(head, tuple) else head)
    assert loaded.v2 is (flavour == "sd2")
    assert loaded.v_parameterization is (flavour == "sd2")
    assert loaded.noise_scheduler.config.prediction_type == ("v_prediction" if flavour == "sd2" else "epsilon")
    assert loaded.base_sha256 and len(loaded.base_sha256) == 64
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_original_layout_keys(tmp_path, flavour):
    tensors, md = read_file(save_tiny_single(tmp_path / "m.safetensors", flavour))
    assert "model.diffusion_model.input_blocks.0.0.weight" in tensors
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in tensors       # plain up block upsampler
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in tensors       # attention up block upsampler
    assert tensors["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4      # VAE attention as 1x1 conv
    assert not any(k.startswith("model_ema.") for k in tensors)
    if flavour == "sd1":
        assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in tensors
        assert not any(k.endswith("position_ids") for k in tensors)
    else:
        w = tensors["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
        assert w.shape == (3 * 48, 48)
        # the unused last resblock and the projection exist as other tools expect
        assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in tensors
        assert tensors["cond_stage_model.model.text_projection"].shape == (48, 48)
    assert md["modelspec.sai_model_spec"] == "1.0.1"
    assert md["modelspec.architecture"] == ("stable-diffusion-v1" if flavour == "sd1" else "stable-diffusion-v2-768-v")
    assert md["modelspec.prediction_type"] == ("epsilon" if flavour == "sd1" else "v")
    assert md["modelspec.implementation_version"].startswith("sdft/")
    assert json.loads(md["sdft.unet_config"])["block_out_channels"] == [32, 32, 64, 64]


@pytest.mark.parametrize("flavour,fmt", [("sd1", "diffusers_safetensors"), ("sd2", "diffusers_safetensors"),
                                         ("sd2", "diffusers")])
def test_diffusers_folder_round_trip(tmp_path, flavour, fmt):
    from engine.models.load import load_model
    from engine.models.save import save_model

    c = tiny(flavour)
    single = save_tiny_single(tmp_path / "m.safetensors", flavour)
    loaded = load_model(str(single))
    out = save_model(tmp_path / "folder", unet=loaded.unet, text_encoder=loaded.text_encoder, vae=loaded.vae,
                     v2=loaded.v2, v_parameterization=loaded.v_parameterization, fmt=fmt, precision="float")
    ext = "safetensors" if fmt == "diffusers_safetensors" else "bin"
    assert stat.S_IMODE(os.stat(out / "unet" / f"diffusion_pytorch_model.{ext}").st_mode) == 0o644
    assert not (tmp_path / "folder.tmp").exists()
    again = load_model(str(out))
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(c[part], getattr(again, part))
    assert again.v2 is (flavour == "sd2")
    assert again.v_parameterization is (flavour == "sd2")
    assert any("scheduler_config.json" in line for line in again.report)
    assert again.tokenizer.pad_token == ("!" if flavour == "sd2" else "<|endoftext|>")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_diffusers_from_single_file_reads_our_file(tmp_path, flavour):
    """diffusers' own loader (given a local config folder) gets identical weights and outputs."""
    from diffusers import StableDiffusionPipeline

    from engine.models.configs import write_config_folder
    from engine.models.load import load_model
    from engine.models.tiny import TinySpec, tiny_text_config, tiny_unet_config, tiny_vae_config

    spec = TinySpec(flavour)
    path = save_tiny_single(tmp_path / "m.safetensors", flavour)
    cfg = write_config_folder(tmp_path / "cfg", v2=spec.v2, v_parameterization=spec.v2,
                              unet=tiny_unet_config(spec), vae=tiny_vae_config(spec),
                              text_encoder=tiny_text_config(spec))
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(cfg), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    c = tiny(flavour)
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(c[part], getattr(pipe, part))
    ours = load_model(str(path))
    ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 4])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ctx = ours.text_encoder(ids).last_hidden_state
        assert torch.equal(ctx, pipe.text_encoder(ids).last_hidden_state)
        out = ours.unet(x, 500, encoder_hidden_states=ctx).sample
        assert torch.equal(out, pipe.unet(x, 500, encoder_hidden_states=ctx).sample)
        assert torch.equal(ours.vae.decode(x).sample, pipe.vae.decode(x).sample)
        # and both match the model that was saved (up to kernel-level float noise)
        torch.testing.assert_close(out, c["unet"].eval()(x, 500, encoder_hidden_states=ctx).sample)


@pytest.mark.parametrize("precision,dtype", [("fp16", "float16"), ("bf16", "bfloat16"), ("float", "float32")])
def test_precision_casting(tmp_path, precision, dtype):
    from engine.models.load import load_model

    path = save_tiny_single(tmp_path / "m.safetensors", "sd1", precision=precision)
    tensors, _ = read_file(path)
    assert {str(v.dtype) for v in tensors.values()} == {f"torch.{dtype}"}
    loaded = load_model(str(path))
    assert loaded.source_dtype == dtype
    assert next(loaded.unet.parameters()).dtype == torch.float32      # training copies are fp32
    ref = tiny("sd1")["unet"].state_dict()["conv_in.weight"]
    assert torch.equal(loaded.unet.state_dict()["conv_in.weight"], ref.to(getattr(torch, dtype)).float())
    assert next(tiny("sd1")["unet"].parameters()).dtype == torch.float32  # saving never casts the model


def test_ckpt_is_loadable_with_weights_only(tmp_path):
    path = save_tiny_single(tmp_path / "m.ckpt", "sd1", fmt="ckpt", epoch=3, global_step=42)
    obj = torch.load(path, weights_only=True)
    assert obj["epoch"] == 3 and obj["global_step"] == 42
    assert "model.diffusion_model.out.2.weight" in obj["state_dict"]


def test_metadata_from_trainer_is_written(tmp_path):
    path = save_tiny_single(tmp_path / "m.safetensors", "sd1", global_step=7, epoch=1,
                            metadata={"sdft.clip_skip": "2", "modelspec.title": "mine",
                                      "sdft.bucket_info": {"buckets": {}}, "sdft.num_images": 12})
    _, md = read_file(path)
    assert md["sdft.clip_skip"] == "2" and md["modelspec.title"] == "mine"
    assert md["sdft.global_step"] == "7" and md["sdft.epoch"] == "1" and md["sdft.num_images"] == "12"
    assert json.loads(md["sdft.bucket_info"]) == {"buckets": {}}


def test_convert_command_all_ways(tmp_path, tiny_sd2, capsys):
    from engine.families.convert_cli import convert_command
    from engine.models.load import load_model

    c = tiny("sd2")
    single = tmp_path / "a.safetensors"
    assert convert_command([str(tiny_sd2), str(single), "--precision", "fp32"]) == 0
    assert "v-prediction" in capsys.readouterr().out
    ckpt = tmp_path / "b.ckpt"
    assert convert_command([str(single), str(ckpt)]) == 0
    folder = tmp_path / "c"
    assert convert_command([str(ckpt), str(folder), "--to", "diffusers"]) == 0
    back = load_model(str(folder))
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(c[part], getattr(back, part))
    half = tmp_path / "d.safetensors"
    assert convert_command([str(folder), str(half), "--precision", "fp16"]) == 0
    tensors, md = read_file(half)
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    assert md["modelspec.prediction_type"] == "v"
    assert convert_command([str(tmp_path / "missing.safetensors"), str(tmp_path / "x.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err

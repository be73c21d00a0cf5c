"""SDXL saving in every format: kohya's keys, diffusers' loaders, and back into sdft bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from sdxl_helpers import tiny_sdxl_parts

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _bare(sd):
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def _assert_same(a, b, dtype=None) -> None:
    for name in PARTS:
        got, want = _bare(getattr(a, name).state_dict()), _bare(getattr(b, name).state_dict())
        assert set(got) == set(want), name
        for key, value in want.items():
            value = value if dtype is None else value.to(dtype).float()
            assert torch.equal(got[key], value), (name, key)


@pytest.fixture(scope="module")
def tiny(tiny_sdxl_folder):
    """The shared tiny folder (tests/conftest.py) and the model loaded from it, which saving never modifies."""
    from engine.families.sdxl.adapter import SDXL

    folder = tiny_sdxl_folder(1)
    return folder, SDXL.load(str(folder))


def _kohya_keys(model) -> set[str]:
    """What kohya's save_stable_diffusion_checkpoint writes for these parts (keys.py follows
    its converters; tests/kohya_sdxl_crosscheck.py runs them)."""
    from engine.families.sdxl.keys import diffusers_to_single_file

    sds = {name: getattr(model, name).state_dict() for name in PARTS}
    return set(diffusers_to_single_file(sds["unet"], sds["vae"], sds["text_encoder"], sds["text_encoder_2"]))


def test_single_file_has_kohya_s_keys_and_loads_back_bit_for_bit(tmp_path, tiny):
    from safetensors import safe_open

    from engine.families.sdxl.adapter import SDXL

    folder, model = tiny
    out = SDXL.save(tmp_path / "out.safetensors", model, v_prediction=False, fmt="safetensors", precision="float",
                    epoch=2, global_step=30, metadata={"sdft.run": "x"})
    with safe_open(str(out), "pt") as f:
        keys, md = set(f.keys()), f.metadata()
    assert keys == _kohya_keys(model)
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base" and md["modelspec.resolution"] == "1024x1024"
    assert md["modelspec.prediction_type"] == "epsilon" and md["sdft.global_step"] == "30" and md["sdft.run"] == "x"
    assert json.loads(md["sdft.text_config_2"])["num_hidden_layers"] == 2
    assert json.loads(md["sdft.scheduler_config"])["_class_name"] == "EulerDiscreteScheduler"
    back = SDXL.load(str(out))
    _assert_same(back, model)
    # heads and groups come back from the metadata, so the U-Net computes the same
    assert back.unet.config.attention_head_dim == model.unet.config.attention_head_dim
    assert back.unet.config.norm_num_groups == 8 and back.text_encoder_2.config.num_attention_heads == 4
    assert back.scheduler_config["_class_name"] == "EulerDiscreteScheduler"


def test_ckpt_is_kohya_s_layout_and_loads_back(tmp_path, tiny):
    from engine.families.sdxl.adapter import SDXL

    _, model = tiny
    out = SDXL.save(tmp_path / "out.ckpt", model, v_prediction=False, fmt="ckpt", precision="fp16", epoch=1,
                    global_step=7)
    obj = torch.load(out, weights_only=True)
    assert obj["epoch"] == 1 and obj["global_step"] == 7 and set(obj["state_dict"]) == _kohya_keys(model)
    assert obj["state_dict"]["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float16
    back = SDXL.load(str(out))
    assert back.source_dtype == "float16"
    _assert_same(back, model, dtype=torch.float16)


def test_diffusers_from_single_file_reads_our_file_bit_for_bit(tmp_path, tiny, tiny_sdxl_folder):
    from diffusers import StableDiffusionXLPipeline

    from engine.families.sdxl.adapter import SDXL

    folder, model = tiny
    other = SDXL.load(str(tiny_sdxl_folder(2)))
    out = SDXL.save(tmp_path / "out.safetensors", other, v_prediction=False, fmt="safetensors", precision="float")
    # config: the tiny folder of another seed, so the weights can only come from the file
    pipe = StableDiffusionXLPipeline.from_single_file(str(out), config=str(folder), local_files_only=True)
    _assert_same(pipe, other)


def test_diffusers_folder_loads_in_the_pipeline_and_back(tmp_path, tiny):
    from diffusers import StableDiffusionXLPipeline

    from engine.families.sdxl.adapter import SDXL

    _, model = tiny
    for fmt in ("diffusers_safetensors", "diffusers"):
        out = SDXL.save(tmp_path / fmt, model, v_prediction=True, fmt=fmt, precision="bf16",
                        scheduler_overrides={"rescale_betas_zero_snr": True})
        pipe = StableDiffusionXLPipeline.from_pretrained(str(out), local_files_only=True)
        assert pipe.unet.dtype == torch.float32   # loads as fp32 by default, whatever it stores
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        assert pipe.scheduler.config.rescale_betas_zero_snr is True
        assert pipe.tokenizer_2.pad_token == "!" and pipe.vae.config.scaling_factor == 0.13025
        back = SDXL.load(str(out))
        assert back.v_parameterization is True and back.zero_terminal_snr is True
        assert back.source_dtype == ("bfloat16" if fmt == "diffusers_safetensors" else None)   # read from safetensors
        _assert_same(back, model, dtype=torch.bfloat16)


def test_trained_parts_replace_the_model_s(tmp_path, tiny):
    from engine.families.sdxl.adapter import SDXL

    _, model = tiny
    trained = tiny_sdxl_parts(2)   # another seed than the model's; saving only reads them
    out = SDXL.save(tmp_path / "t.safetensors", model, v_prediction=False, fmt="safetensors", precision="float",
                    trained={"unet": trained["unet"], "text_encoder_2": trained["text_encoder_2"]})
    back = SDXL.load(str(out))
    assert torch.equal(back.unet.conv_in.weight, trained["unet"].conv_in.weight)
    assert torch.equal(back.text_encoder_2.text_projection.weight, trained["text_encoder_2"].text_projection.weight)
    assert torch.equal(back.text_encoder.get_input_embeddings().weight, model.text_encoder.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="trained parts \\['hypernetwork'\\]"):
        SDXL.save(tmp_path / "x.safetensors", model, v_prediction=False, fmt="safetensors", precision="float",
                  trained={"hypernetwork": trained["unet"]})


def test_v_prediction_file_carries_the_marks_comfyui_reads(tmp_path, tiny):
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    from engine.families.sdxl.adapter import SDXL

    folder, model = tiny
    out = SDXL.save(tmp_path / "v.safetensors", model, v_prediction=True, fmt="safetensors", precision="float",
                    scheduler_overrides={"rescale_betas_zero_snr": True})
    with safe_open(str(out), "pt") as f:
        keys, md = set(f.keys()), f.metadata()
        assert f.get_tensor("v_pred").numel() == 0 and f.get_tensor("ztsnr").numel() == 0
    assert keys == _kohya_keys(model) | {"v_pred", "ztsnr"}
    assert md["modelspec.prediction_type"] == "v" and md["sdft.zero_terminal_snr"] == "true"
    back = SDXL.load(str(out))
    assert back.v_parameterization is True and back.zero_terminal_snr is True
    # diffusers' loader takes the marked file too
    pipe = StableDiffusionXLPipeline.from_single_file(str(out), config=str(folder), local_files_only=True)
    _assert_same(pipe, model)


def test_an_existing_file_is_replaced_atomically(tmp_path, tiny, monkeypatch):
    from engine.families.sdxl import save as sdxl_save
    from engine.families.sdxl.adapter import SDXL

    _, model = tiny
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(Exception, match="No space left"):
        sdxl_save.save_sdxl(target, model, v_prediction=False, fmt="safetensors", precision="fp16")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    monkeypatch.undo()
    SDXL.save(target, model, v_prediction=False, fmt="safetensors", precision="fp16")
    assert target.stat().st_size > 1000

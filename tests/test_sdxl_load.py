"""SDXL loading: built-in configs, diffusers folders, single files, v-prediction marks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components, save_tiny_sdxl_model
from engine.models.errors import ModelLoadError

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _bare(sd):
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def _same_weights(model, parts: dict) -> None:
    for name in PARTS:
        got, want = _bare(getattr(model, name).state_dict()), _bare(parts[name].state_dict())
        assert set(got) == set(want), name
        for key, value in want.items():
            assert got[key].dtype == torch.float32 and torch.equal(got[key], value.float()), (name, key)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_sdxl_model(tmp_path_factory.mktemp("sdxl") / "tiny", TinySdxlSpec(seed=3))


# ------------------------------------------------------------------ built-in configs


def test_builtin_configs_build_sdxl_base_1_0_at_full_size():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.families.sdxl.configs import builtin_config

    def public(cfg):
        return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "model_type")}

    with torch.device("meta"):
        unet = UNet2DConditionModel(**public(builtin_config("unet")))
        te1 = CLIPTextModel(CLIPTextConfig(**public(builtin_config("text_encoder"))))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**public(builtin_config("text_encoder_2"))))
        vae = AutoencoderKL(**public(builtin_config("vae")))
    count = {name: sum(p.numel() for p in m.parameters()) for name, m in
             (("unet", unet), ("te1", te1), ("te2", te2), ("vae", vae))}
    # SDXL base 1.0's published parameter counts
    assert count == {"unet": 2_567_463_684, "te1": 123_060_480, "te2": 694_659_840, "vae": 83_653_863}
    assert len(unet.state_dict()) == 1680   # kohya's U-Net key count (test_sdxl_keys.py)
    assert vae.config.scaling_factor == 0.13025 and vae.config.force_upcast
    assert builtin_config("scheduler")["_class_name"] == "EulerDiscreteScheduler"
    # the tokenizers' real ids; TE2 pads with "!"
    assert (te1.config.eos_token_id, te2.config.eos_token_id, te2.config.pad_token_id) == (49407, 49407, 0)


def test_config_folder_is_what_from_single_file_needs(tmp_path):
    from engine.families.sdxl.configs import builtin_config, write_config_folder

    folder = write_config_folder(tmp_path / "cfg")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    assert unet["transformer_layers_per_block"] == [1, 2, 10] and unet["_class_name"] == "UNet2DConditionModel"
    te2 = json.loads((folder / "text_encoder_2" / "config.json").read_text())
    assert te2["architectures"] == ["CLIPTextModelWithProjection"] and te2["num_hidden_layers"] == 32
    assert (folder / "tokenizer_2" / "vocab.json").is_file()
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text()) == builtin_config("scheduler")


# ------------------------------------------------------------------ diffusers folder


def test_folder_loads_through_the_adapter_fp32_with_both_tokenizers(tiny_folder):
    from engine.families import family_of
    from engine.families.sdxl.adapter import SDXL
    from engine.models.load import LoadedModel

    model = SDXL.load(str(tiny_folder))
    assert isinstance(model, LoadedModel) and family_of(model) is SDXL
    assert model.family == "sdxl" and model.v2 is False and model.v_parameterization is False
    assert type(model.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    _same_weights(model, build_tiny_sdxl_components(TinySdxlSpec(seed=3)))
    assert model.tokenizer.pad_token_id == 49407 and model.tokenizer_2.pad_token == "!"
    assert model.tokenizer_2.pad_token_id == 0
    assert model.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert model.noise_scheduler.config.prediction_type == "epsilon"
    assert model.noise_scheduler.config.num_train_timesteps == 1000
    assert model.base_name == "tiny" and model.base_sha256 is None and model.source_dtype == "float32"
    assert any("SDXL" in line and "small test model" in line for line in model.report)
    assert not model.unet.training and not model.text_encoder_2.training


def test_loaded_model_encodes_and_runs_the_unet(tiny_folder):
    """The loaded parts plug into the adapter's text encoding and U-Net inputs."""
    from types import SimpleNamespace

    from engine.families.sdxl.adapter import SDXL
    from engine.families.sdxl.conditioning import SizeConditioning

    model = SDXL.load(str(tiny_folder))
    encoder = SDXL.prompt_encoder(model, max_token_length=75, clip_skip=1, weighted=False)
    with torch.no_grad():
        text = encoder.encode(encoder.tokenize(["a cat"]), torch.device("cpu"))
        batch = SimpleNamespace(size_conditioning=[SizeConditioning((64, 64), (0, 0), (64, 64))])
        states, extra = SDXL.unet_inputs(model, batch, text, torch.float32)
        out = model.unet(torch.zeros(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=states, **extra).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_folder_scheduler_marks_v_prediction_and_zero_terminal_snr(tmp_path, tiny_folder):
    from engine.families.sdxl.adapter import SDXL

    folder = shutil.copytree(tiny_folder, tmp_path / "vpred")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), prediction_type="v_prediction",
                                    rescale_betas_zero_snr=True)))
    model = SDXL.load(str(folder))
    assert model.v_parameterization is True and model.zero_terminal_snr is True
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    assert any("prediction_type = v_prediction" in line for line in model.report)
    assert any("rescale_betas_zero_snr = true" in line for line in model.report)
    # the run file's setting wins
    assert SDXL.load(str(folder), v_parameterization=False).v_parameterization is False


def test_folder_problems_are_named(tmp_path, tiny_folder):
    from engine.families.sdxl.adapter import SDXL

    folder = shutil.copytree(tiny_folder, tmp_path / "broken")
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelLoadError, match=r"lacks text_encoder_2/"):
        SDXL.load(str(folder))
    folder = shutil.copytree(tiny_folder, tmp_path / "bad_config")
    cfg = folder / "text_encoder_2" / "config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), num_attention_heads=5)))
    with pytest.raises(ModelLoadError, match=r"text_encoder_2/config.json: num_attention_heads = 5 must divide"):
        SDXL.load(str(folder))
    with pytest.raises(ModelLoadError, match="model.v2 = true names an SD 2.x model"):
        SDXL.load(str(tiny_folder), v2=True)


def test_hub_id_offline_is_refused_with_the_download_advice(monkeypatch):
    from engine.families.sdxl.adapter import SDXL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline.*hf download stabilityai/stable-diffusion-xl-base-1.0"):
        SDXL.load("stabilityai/stable-diffusion-xl-base-1.0")

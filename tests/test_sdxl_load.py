"""SDXL loading: built-in configs, diffusers folders, single files, v-prediction marks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from sdxl_helpers import tiny_sdxl_parts

from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components
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


@pytest.fixture
def tiny_folder(tiny_sdxl_folder):
    """The folder of ``tiny_sdxl_parts(1)``, saved once per worker (tests/conftest.py): tests copy
    it before changing it."""
    return tiny_sdxl_folder(1)


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
    _same_weights(model, tiny_sdxl_parts(1))
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
    refiner = shutil.copytree(tiny_folder, tmp_path / "refiner")
    index = refiner / "model_index.json"
    index.write_text(json.dumps(dict(json.loads(index.read_text()), requires_aesthetics_score=True)))
    with pytest.raises(ModelLoadError, match="an SDXL refiner"):
        SDXL.load(str(refiner))


def test_hub_id_offline_is_refused_with_the_download_advice(monkeypatch):
    from engine.families.sdxl.adapter import SDXL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline.*hf download stabilityai/stable-diffusion-xl-base-1.0"):
        SDXL.load("stabilityai/stable-diffusion-xl-base-1.0")


# ------------------------------------------------------------------ single files


def _single_file_sd(parts: dict) -> dict:
    from engine.families.sdxl.keys import diffusers_to_single_file

    sds = {name: parts[name].state_dict() for name in PARTS}
    sd = diffusers_to_single_file(sds["unet"], sds["vae"], sds["text_encoder"], sds["text_encoder_2"])
    return {k: v.contiguous() for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny_parts():
    """Another seed than tiny_folder's, so a file's weights and the folder's never coincide."""
    return tiny_sdxl_parts(2)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_parts):
    """A tiny SDXL file with the keys kohya's sdxl_model_util writes and no metadata."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("sdxl_file") / "tiny.safetensors"
    save_file(_single_file_sd(tiny_parts), str(path))
    return path


def test_single_file_loads_bit_for_bit_with_sizes_from_the_shapes(tiny_file, tiny_parts):
    from engine.families import family_of
    from engine.families.sdxl.adapter import SDXL

    model = SDXL.load(str(tiny_file))
    assert family_of(model) is SDXL and model.family == "sdxl"
    _same_weights(model, tiny_parts)
    unet, want = model.unet.config, tiny_parts["unet"].config
    for key in ("block_out_channels", "transformer_layers_per_block", "cross_attention_dim", "layers_per_block",
                "addition_time_embed_dim", "projection_class_embeddings_input_dim", "down_block_types",
                "up_block_types"):
        assert list(unet[key]) == list(want[key]) if isinstance(want[key], (list, tuple)) else unet[key] == want[key]
    assert model.text_encoder.config.num_hidden_layers == 12 and model.text_encoder_2.config.num_hidden_layers == 2
    assert model.text_encoder_2.config.projection_dim == 48
    assert model.vae.config.scaling_factor == 0.13025
    assert model.base_sha256 and model.base_name == "tiny" and model.source_dtype == "float32"
    assert model.v_parameterization is False and model.zero_terminal_snr is False
    assert any("no mark in the model (SDXL base predicts epsilon)" in line for line in model.report)


def test_buffers_other_tools_write_are_ignored(tmp_path, tiny_parts):
    """Stability AI's TE1 position_ids, OpenCLIP's attn_mask and logit_scale, ComfyUI's TE2
    position_ids, LDM's schedule buffers: not weights, so not errors."""
    from safetensors.torch import save_file

    from engine.families.sdxl.adapter import SDXL

    extra = {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
             "conditioner.embedders.1.model.attn_mask": torch.zeros(77, 77),
             "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6052),
             "conditioner.embedders.1.model.text_model.embeddings.position_ids": torch.arange(77)[None],
             "alphas_cumprod": torch.ones(1000)}
    save_file(dict(_single_file_sd(tiny_parts), **extra), str(tmp_path / "extra.safetensors"))
    model = SDXL.load(str(tmp_path / "extra.safetensors"))
    _same_weights(model, tiny_parts)
    assert float(model.logit_scale) == pytest.approx(4.6052)   # kept, and written back as kohya does
    from safetensors import safe_open

    out = SDXL.save(tmp_path / "out.safetensors", model, v_prediction=False, fmt="safetensors", precision="float")
    with safe_open(str(out), "pt") as f:
        assert float(f.get_tensor("conditioner.embedders.1.model.logit_scale")) == pytest.approx(4.6052)
        assert not any("position_ids" in k or "attn_mask" in k or k == "alphas_cumprod" for k in f.keys())


def test_tokenizer_dir_replaces_both_tokenizers(tiny_folder):
    from engine.families.sdxl.adapter import SDXL

    model = SDXL.load(str(tiny_folder), tokenizer_dir=str(tiny_folder / "tokenizer"))
    assert model.tokenizer("a cat").input_ids == model.tokenizer_2("a cat").input_ids
    assert model.tokenizer.pad_token_id == 49407 and model.tokenizer_2.pad_token_id == 0


def test_ckpt_loads_with_the_weights_only_unpickler(tmp_path, tiny_parts):
    from engine.families.sdxl.adapter import SDXL

    sd = {k: v.half() for k, v in _single_file_sd(tiny_parts).items()}
    torch.save({"state_dict": sd, "global_step": 1234}, tmp_path / "tiny.ckpt")
    model = SDXL.load(str(tmp_path / "tiny.ckpt"))
    assert model.source_dtype == "float16" and model.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(model.unet.conv_in.weight, tiny_parts["unet"].conv_in.weight.half().float())
    assert "checkpoint global_step: 1234" in model.report

    class Payload:   # a pickle that would run code when loaded
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": sd, "extra": Payload()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(ModelLoadError, match="refused to load this .ckpt"):
        SDXL.load(str(tmp_path / "unsafe.ckpt"))


def test_full_size_shapes_give_the_builtin_configs_exactly():
    """A real SDXL file (shapes of SDXL base 1.0, here on the meta device) reads as the built-in configs."""
    from engine.families.sdxl.configs import builtin_config
    from engine.families.sdxl.infer import infer_sdxl_vae_config, infer_text_config, infer_unet_config, te2_shapes
    from engine.families.sdxl.keys import TE2_PREFIX, te2_to_single_file
    from engine.models.load import empty_model, text_ctor, unet_ctor, vae_ctor

    unet = empty_model(unet_ctor(builtin_config("unet"))).state_dict()
    te2 = empty_model(text_ctor(builtin_config("text_encoder_2"), with_projection=True)).state_dict()
    from engine.families.sdxl.keys import unet_key_map
    from engine.models.convert import vae_key_map

    unet_part = {orig.removeprefix("model.diffusion_model."): unet[k] for k, orig in unet_key_map(unet).items()}
    te2_part = {k.removeprefix(TE2_PREFIX): v for k, v in te2_to_single_file(te2).items()}
    vae = empty_model(vae_ctor(builtin_config("vae"))).state_dict()
    vae_part = {orig.removeprefix("first_stage_model."): vae[k] for k, orig in vae_key_map(vae).items()}

    def public(cfg):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}

    assert public(infer_unet_config(unet_part, te2_projection=1280)) == public(builtin_config("unet"))
    got_te2 = infer_text_config(te2_shapes(te2_part), second=True)
    assert got_te2 == {k: v for k, v in builtin_config("text_encoder_2").items()
                       if k not in ("architectures", "model_type")}
    assert public(infer_sdxl_vae_config(vae_part)) == public(builtin_config("vae"))


def test_v_prediction_and_ztsnr_marks_in_a_file(tmp_path, tiny_parts):
    """NoobAI-XL's v-pred files carry empty ``v_pred`` and ``ztsnr`` tensors (what ComfyUI reads)."""
    from safetensors.torch import save_file

    from engine.families.sdxl.adapter import SDXL

    sd = dict(_single_file_sd(tiny_parts), v_pred=torch.tensor([]), ztsnr=torch.tensor([]))
    save_file(sd, str(tmp_path / "noob.safetensors"))
    model = SDXL.load(str(tmp_path / "noob.safetensors"))
    assert model.v_parameterization is True and model.zero_terminal_snr is True
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    assert any("'v_pred' key" in line for line in model.report)
    assert any("'ztsnr' key" in line for line in model.report)
    assert SDXL.load(str(tmp_path / "noob.safetensors"), v_parameterization=False).v_parameterization is False

    save_file(_single_file_sd(tiny_parts), str(tmp_path / "meta.safetensors"),
              metadata={"modelspec.prediction_type": "v"})
    assert SDXL.load(str(tmp_path / "meta.safetensors")).v_parameterization is True


def test_single_file_problems_are_named(tmp_path, tiny_parts):
    from safetensors.torch import save_file

    from engine.families.sdxl.adapter import SDXL

    def load(sd, name="bad.safetensors", **options):
        save_file(sd, str(tmp_path / name))
        return SDXL.load(str(tmp_path / name), **options)

    sd = _single_file_sd(tiny_parts)
    with pytest.raises(ModelLoadError, match=r"no second text encoder \(OpenCLIP bigG\)"):
        load({k: v for k, v in sd.items() if not k.startswith("conditioner.embedders.1.")})
    with pytest.raises(ModelLoadError, match="no VAE.*set model.vae"):
        load({k: v for k, v in sd.items() if not k.startswith("first_stage_model.")})
    with pytest.raises(ModelLoadError, match="LoRA file"):
        load({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)})
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in sd.items()
               if not k.startswith("conditioner.embedders.0.")}
    with pytest.raises(ModelLoadError, match="an SDXL refiner"):
        load(refiner)
    with pytest.raises(ModelLoadError, match="EDM model"):
        load(dict(sd, edm_mean=torch.zeros(1, 4, 1, 1), edm_std=torch.ones(1, 4, 1, 1)))
    inpaint = dict(sd)
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    with pytest.raises(ModelLoadError, match=r"inpainting model \(9 U-Net input channels\)"):
        load(inpaint)
    broken = dict(sd)
    del broken["model.diffusion_model.output_blocks.2.2.conv.weight"]
    with pytest.raises(ModelLoadError, match=r"output_blocks\.2\.2\.conv\.weight"):
        load(broken)
    with pytest.raises(ModelLoadError, match=r"sdft.unet_config gives norm_num_groups = 7"):
        save_file(sd, str(tmp_path / "meta.safetensors"), metadata={"sdft.unet_config": '{"norm_num_groups": 7}'})
        SDXL.load(str(tmp_path / "meta.safetensors"))


def test_separate_vae_replaces_the_file_s(tmp_path, tiny_parts, tiny_folder):
    from safetensors.torch import save_file

    from engine.families.sdxl.adapter import SDXL

    sd = {k: v for k, v in _single_file_sd(tiny_parts).items() if not k.startswith("first_stage_model.")}
    save_file(sd, str(tmp_path / "novae.safetensors"))
    model = SDXL.load(str(tmp_path / "novae.safetensors"), vae=str(tiny_folder / "vae"))
    want = tiny_sdxl_parts(1)["vae"]
    assert torch.equal(model.vae.encoder.conv_in.weight, want.encoder.conv_in.weight)
    assert model.vae.config.scaling_factor == 0.13025


def test_the_tiny_kit_saves_a_file_that_loads_back_exactly(tmp_path):
    from engine.families.sdxl.adapter import SDXL
    from engine.families.sdxl.tiny import save_tiny_sdxl_file

    spec = TinySdxlSpec(seed=13, v_prediction=True)
    model = SDXL.load(str(save_tiny_sdxl_file(tmp_path / "t.ckpt", spec, fmt="ckpt")))
    want = build_tiny_sdxl_components(spec)
    _same_weights(model, want)
    assert model.unet.config.attention_head_dim == list(want["unet"].config.attention_head_dim)
    assert model.v_parameterization is True
    assert model.scheduler_config["prediction_type"] == "v_prediction"


def test_loaded_single_file_samples_through_the_adapter_s_pipeline(tiny_file):
    """What training's previews will do: the adapter's pipeline around the loaded parts."""
    from diffusers import EulerDiscreteScheduler

    from engine.families.sdxl.adapter import SDXL
    from engine.families.sdxl.configs import scheduler_config

    model = SDXL.load(str(tiny_file))
    pipe = SDXL.sampling_pipeline(model, model.unet, EulerDiscreteScheduler.from_config(scheduler_config()))
    image = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()

"""Model families as adapters (docs/architecture.md, "Model families"): the registry names each
family's adapter, the generic code asks the adapter of the loaded model, and a new family is one
adapter plus one registry entry."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

HEAVY = ("torch", "diffusers", "transformers", "textual")


def test_every_registry_entry_resolves_to_its_adapter():
    from engine.families import every_family, family
    from engine.families.base import Family
    from engine.registry.families import FAMILIES

    assert [f.name for f in every_family()] == [e.name for e in FAMILIES] == ["sd1", "sd2", "sdxl"]
    for entry in FAMILIES:
        adapter = family(entry.name)
        assert isinstance(adapter, Family) and adapter.name == entry.name and adapter.label == entry.label
    assert [e.name for e in FAMILIES if e.refused] == []
    with pytest.raises(ValueError, match="unknown model family 'sd9': use one of sd1, sd2, sdxl"):
        family("sd9")


def test_families_and_their_planner_figures_load_no_torch():
    """The planner and the wizard read adapters before any model loads."""
    code = ("import sys; from engine.families import every_family; every_family()\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(("v2", "v_prediction", "name", "side"), [
    (False, False, "sd1", 512), (False, True, "sd1", 512), (True, False, "sd2", 512), (True, True, "sd2", 768)])
def test_a_loaded_model_names_its_family_and_the_family_its_side(v2, v_prediction, name, side):
    from engine.families import family_of
    from engine.models.load import LoadedModel
    from engine.train.components import default_side

    model = LoadedModel(unet=None, vae=None, text_encoder=None, tokenizer=None, noise_scheduler=None, v2=v2,
                        v_parameterization=v_prediction, report=[], source="", base_name="", base_sha256=None)
    assert model.family == name and family_of(model).name == name
    assert default_side(model, SimpleNamespace(v_prediction=v_prediction)) == side


def test_the_vae_scale_warning_names_the_family(monkeypatch):
    """noise_tables takes the VAE's own scale and compares it with the family's."""
    from engine.families import family
    from engine.train.components import noise_tables

    train = SimpleNamespace(scale_v_pred_loss_like_noise_pred=False, zero_terminal_snr=False, noise_offset=0.0,
                            noise_offset_random_strength=False, adaptive_noise_scale=None,
                            multires_noise_iterations=0, multires_noise_discount=0.3, ip_noise_gamma=None,
                            ip_noise_gamma_random_strength=False, loss_type="l2", huber_schedule="snr",
                            huber_c=0.1, huber_scale=1.0, min_snr_gamma=None,
                            debiased_estimation_loss=False)
    said = []
    model = SimpleNamespace(family="sd2", v_parameterization=True,
                            vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=0.18215)))
    assert noise_tables(train, model, "cpu", lambda *a: said.append(a)).latent_scale == 0.18215
    assert said == []
    monkeypatch.setattr(family("sd2"), "vae_scale", 0.5)
    assert noise_tables(train, model, "cpu", lambda *a: said.append(a)).latent_scale == 0.18215
    assert said == [("the VAE's scaling_factor is 0.18215, not SD 2.x's 0.5: using the VAE's", "warning")]


@pytest.mark.parametrize("flavour", ["sd1", "sd2"])
def test_the_prompt_encoder_and_the_pipeline_come_from_the_family(flavour):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from engine.models.tiny import TinySpec, build_tiny_components
    from engine.train.components import build_prompt_encoder
    from engine.train.sampling import preview_pipeline

    c = build_tiny_components(TinySpec(flavour))
    model = SimpleNamespace(family=flavour, **c)
    cfg = SimpleNamespace(model=SimpleNamespace(max_token_length=150, clip_skip=2),
                          train=SimpleNamespace(weighted_captions=True))
    encoder = build_prompt_encoder(cfg, model, lambda *a: None)
    assert (encoder.v2, encoder.chunks, encoder.clip_skip, encoder.weighted) == (flavour == "sd2", 2, 2, True)
    assert encoder.text_encoder is c["text_encoder"]
    pipe = preview_pipeline(model, c["unet"], DDIMScheduler())
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.unet is c["unet"] and pipe.vae is c["vae"]


def test_a_new_family_is_one_adapter_and_one_registry_entry(monkeypatch):
    """The planner (and everything else) finds a family through the registry alone."""
    import dataclasses

    from engine import families
    from engine.families.base import Family
    from engine.plan import PlanOptions, estimate_peak_vram
    from engine.registry import families as registry

    sd1 = families.family("sd1")

    class Big(Family):
        name, label, vae_scale = "big", "Big", 0.1
        plan = dataclasses.replace(sd1.plan, unet_params=2 * sd1.plan.unet_params)

    monkeypatch.setitem(sys.modules, "big_family", SimpleNamespace(BIG=Big()))
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, registry.FamilyEntry("big", "Big", "big_family:BIG")))
    families.family.cache_clear()
    try:
        small = estimate_peak_vram(PlanOptions(family="sd1")).breakdown
        big = estimate_peak_vram(PlanOptions(family="big")).breakdown
    finally:
        families.family.cache_clear()
    weights = [k for k in small if k.startswith("U-Net weights")]
    assert weights and all(big[k] == pytest.approx(2 * small[k]) for k in weights)


@pytest.mark.parametrize("flavour", ["sd1", "sd2"])
def test_the_family_is_detected_from_a_folder_or_a_header_and_loads_the_model(flavour, tmp_path, request):
    """A diffusers folder by its configs, a .safetensors file by its header, a .ckpt by the names
    and shapes the weights-only unpickler maps (its data not read)."""
    from models_helpers import save_tiny_single

    from engine.families.sources import detect_family, load_base

    folder = request.getfixturevalue(f"tiny_{flavour}")
    single = save_tiny_single(tmp_path / "m.safetensors", flavour)
    ckpt = save_tiny_single(tmp_path / "m.ckpt", flavour, fmt="ckpt")
    assert detect_family(folder).name == flavour
    assert detect_family(single).name == flavour
    assert detect_family(ckpt).name == flavour
    for source in (folder, single, ckpt):
        model = load_base(str(source), hash_file=False)
        assert model.family == flavour and model.v2 == (flavour == "sd2")


def test_a_setting_overrides_the_detected_sd_family(tiny_sd1):
    """model.v2 = true on a folder detected as SD1: the SD loader takes the setting, as before,
    and the model belongs to the family it loaded as."""
    from engine.families.sources import detect_family, load_base

    assert detect_family(tiny_sd1).name == "sd1"
    model = load_base(str(tiny_sd1), v2=True)
    assert model.family == "sd2" and any("from your setting model.v2 = true" in line for line in model.report)


def test_a_family_the_registry_refuses_is_refused_before_loading(monkeypatch, tmp_path):
    from engine import families
    from engine.families.base import Family
    from engine.families.sources import load_base
    from engine.models.errors import ModelLoadError
    from engine.registry import families as registry

    class Odd(Family):
        name, label = "odd", "Odd"

        def recognises(self, view):
            return bool(view.unet_config.get("odd"))

        def load(self, source, **options):
            raise AssertionError("a refused family must not load")

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"odd": true}')
    monkeypatch.setitem(sys.modules, "odd_family", SimpleNamespace(ODD=Odd()))
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES,
                                               registry.FamilyEntry("odd", "Odd", "odd_family:ODD", "not yet.")))
    families.family.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match=r": an Odd model\. not yet\.$"):
            load_base(str(tmp_path))
    finally:
        families.family.cache_clear()


def _tiny_sdxl_file(path):
    """A tiny SDXL single file in kohya's layout (engine/families/sdxl/keys.py)."""
    from safetensors.torch import save_file

    from engine.families.sdxl.keys import diffusers_to_single_file
    from engine.families.sdxl.tiny import build_tiny_sdxl_components

    c = build_tiny_sdxl_components()
    sd = diffusers_to_single_file(*(c[k].state_dict() for k in ("unet", "vae", "text_encoder", "text_encoder_2")))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_sdxl_is_detected_and_loaded_through_its_adapter(tmp_path):
    """The SDXL adapter recognises a folder and a single file, and the base model loads through
    it; SD's own loader, given one, names it as SDXL."""
    from engine.families import family
    from engine.families.sdxl.tiny import save_tiny_sdxl_model
    from engine.families.sources import detect_family, load_base
    from engine.models.errors import ModelLoadError
    from engine.models.load import load_model

    folder = save_tiny_sdxl_model(tmp_path / "xl")
    single = _tiny_sdxl_file(tmp_path / "xl.safetensors")
    for source in (folder, single):
        assert detect_family(source) is family("sdxl")
        model = load_base(str(source), hash_file=False)
        assert model.family == "sdxl" and model.text_encoder_2 is not None
        with pytest.raises(ModelLoadError, match=r"an SDXL (model|checkpoint)"):
            load_model(str(source), hash_file=False)


def test_sdxl_owns_its_scale_side_text_encoding_and_pipeline():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from engine.families import family
    from engine.families.sdxl.text_encoding import SdxlPromptEncoder
    from engine.families.sdxl.tiny import build_tiny_sdxl_components
    from engine.plan import PlanOptions, estimate_peak_vram

    xl = family("sdxl")
    assert (xl.vae_scale, xl.native_side(False), xl.native_side(True)) == (0.13025, 1024, 1024)
    c = build_tiny_sdxl_components()
    model = SimpleNamespace(family="sdxl", **c)
    encoder = xl.prompt_encoder(model, max_token_length=225, clip_skip=1, weighted=False)
    assert isinstance(encoder, SdxlPromptEncoder) and encoder.chunks == 3
    assert encoder.text_encoder2 is c["text_encoder_2"]
    with pytest.raises(ValueError, match="model.clip_skip = 2: SDXL reads fixed layers"):
        xl.prompt_encoder(model, max_token_length=75, clip_skip=2, weighted=False)
    with pytest.raises(ValueError, match="train.weighted_captions: not available for SDXL yet"):
        xl.prompt_encoder(model, max_token_length=75, clip_skip=1, weighted=True)
    pipe = xl.sampling_pipeline(model, c["unet"], EulerDiscreteScheduler())
    assert isinstance(pipe, StableDiffusionXLPipeline) and pipe.text_encoder_2 is c["text_encoder_2"]
    # the planner asks the adapter for its figures (tests/test_plan_sdxl.py checks them)
    assert estimate_peak_vram(PlanOptions(family="sdxl", width=1024, height=1024)).total_bytes > \
        estimate_peak_vram(PlanOptions(family="sd1", width=1024, height=1024)).total_bytes


def test_a_run_loads_conditions_and_saves_through_the_family(tmp_path, tiny_sd1, monkeypatch):
    """The Trainer asks the SD1 adapter to load, for each micro-batch's U-Net inputs (whose extra
    arguments reach the U-Net), and to save the final model."""
    from train_helpers import make_run

    from engine.events import ListSink
    from engine.families import family
    from engine.runner import run_training

    sd1, calls = family("sd1"), []
    original = {name: getattr(sd1, name) for name in ("load", "unet_inputs", "save")}

    def recording(name, extra=None):
        def call(*args, **kwargs):
            calls.append(name)
            result = original[name](*args, **kwargs)
            return result if extra is None else (result[0], extra)
        return call

    for name in ("load", "save"):
        monkeypatch.setattr(sd1, name, recording(name))
    # A real keyword the U-Net takes: the adapter's answer reaches the call.
    monkeypatch.setattr(sd1, "unet_inputs", recording("unet_inputs", {"return_dict": True}))
    result = run_training(make_run(tmp_path, tiny_sd1, steps=2), sink=ListSink())
    assert result.status == "completed", result.message
    assert calls == ["load", "unet_inputs", "unet_inputs", "save"]

    monkeypatch.setattr(sd1, "unet_inputs", recording("unet_inputs", {"no_such_argument": 1}))
    result = run_training(make_run(tmp_path / "b", tiny_sd1, steps=1), sink=ListSink())
    assert result.status == "failed" and "no_such_argument" in result.message


def test_sdxl_unet_inputs_run_the_tiny_sdxl_unet():
    """Both encoders' states, the pooled text and each image's six size and crop numbers, as
    diffusers' SDXL pipeline hands them to its U-Net."""
    import torch

    from engine.families import family
    from engine.families.sdxl.conditioning import size_conditioning
    from engine.families.sdxl.tiny import build_tiny_sdxl_components

    xl, c = family("sdxl"), build_tiny_sdxl_components()
    model = SimpleNamespace(family="sdxl", **c)
    text = xl.prompt_encoder(model, max_token_length=75, clip_skip=1, weighted=False)(["a", "b c"], "cpu")
    sizes = [size_conditioning((96, 64), (64, 64)), size_conditioning((64, 80), (64, 64), flipped=True)]
    states, extra = xl.unet_inputs(model, SimpleNamespace(size_conditioning=sizes), text, torch.float32)
    assert torch.equal(states, torch.cat([text.states1, text.states2], dim=2))
    assert torch.equal(extra["added_cond_kwargs"]["text_embeds"], text.pooled)
    assert extra["added_cond_kwargs"]["time_ids"].tolist() == [list(s.time_ids()) for s in sizes]
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = c["unet"](noisy, torch.tensor([10, 500]), states, **extra).sample
    assert pred.shape == noisy.shape and torch.isfinite(pred).all()
    with pytest.raises(ValueError, match="an SDXL batch needs each image's size and crop conditioning"):
        xl.unet_inputs(model, SimpleNamespace(), text, torch.float32)


def test_check_passes_for_an_sdxl_model_and_convert_converts_it(tmp_path, tiny_sd1, capsys):
    """--check reads an SDXL folder and single file as training does; clip skip (in the SD run
    file) is refused with SDXL's reason, and without it the check passes; sdft convert converts
    it (test_sdxl_convert.py)."""
    from train_helpers import make_run

    from engine.cli import main
    from engine.families.sdxl.tiny import save_tiny_sdxl_model

    folder = save_tiny_sdxl_model(tmp_path / "xl")
    single = _tiny_sdxl_file(tmp_path / "xl.safetensors")
    for index, model in enumerate((folder, single)):
        config = make_run(tmp_path / f"run{index}", tiny_sd1)
        config.write_text(config.read_text().replace(str(tiny_sd1), str(model)))
        assert main(["train", str(config), "--check"]) == 2
        out = capsys.readouterr()
        assert "model.clip_skip" in out.out + out.err and "SDXL reads fixed layers" in out.out + out.err
        config.write_text(config.read_text().replace("clip_skip = 2\n", ""))
        assert main(["train", str(config), "--check"]) == 0, capsys.readouterr()
        out = capsys.readouterr()
        assert "SDXL" in out.out + out.err
        assert main(["convert", str(model), str(tmp_path / f"out{index}.safetensors")]) == 0
        assert "SDXL" in capsys.readouterr().out


def test_save_takes_the_trained_parts_by_role_and_the_rest_from_the_model(tmp_path):
    from models_helpers import assert_same_weights, tiny

    from engine.families import family
    from engine.models.load import load_model

    base, trained_unet = tiny("sd1"), tiny("sd1", seed=1)["unet"]
    model = SimpleNamespace(family="sd1", **base)
    path = family("sd1").save(tmp_path / "m.safetensors", model, trained={"unet": trained_unet},
                              v_prediction=False, fmt="safetensors", precision="float")
    back = load_model(str(path), hash_file=False)
    assert_same_weights(back.unet, trained_unet)
    assert_same_weights(back.text_encoder, base["text_encoder"])
    assert_same_weights(back.vae, base["vae"])


def test_what_no_family_recognises_goes_to_the_sd_loader_and_its_errors(tmp_path):
    """A LoRA file is no family's: it reaches the SD loader, which names what it is."""
    import torch
    from models_helpers import write_file

    from engine.families.sources import detect_family, load_base
    from engine.models.errors import ModelLoadError

    lora = write_file(tmp_path / "lora.safetensors", {"lora_unet_down.lora_down.weight": torch.zeros(4, 4)})
    assert detect_family(lora) is None
    with pytest.raises(ModelLoadError, match="this is a LoRA file, not a base model"):
        load_base(str(lora), hash_file=False)

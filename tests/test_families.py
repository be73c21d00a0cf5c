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

    assert [f.name for f in every_family()] == [e.name for e in FAMILIES] == ["sd1", "sd2"]
    for entry in FAMILIES:
        adapter = family(entry.name)
        assert isinstance(adapter, Family) and adapter.name == entry.name and adapter.label == entry.label
    with pytest.raises(ValueError, match="unknown model family 'sd9': use one of sd1, sd2"):
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

"""The VRAM planner for SDXL: kohya's low-memory recipe under 24 GB, the text encoders (two,
trained apart, cached outputs), the attention levels, the presets and `sdft plan` naming SDXL."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from engine.plan import (
    GIB,
    PlanOptions,
    apply_preset_to_options,
    budget_for_preset,
    coefficients,
    estimate_peak_vram,
    hypernetwork_params,
    preset_for,
    preset_values,
    presets_for,
    suggest,
)

TE1, TE2 = 123_060_480, 694_659_840
# kohya's sdxl_train.py low-memory recipe: --full_bf16 --fused_backward_pass --optimizer_type
# adafactor --gradient_checkpointing --cache_text_encoder_outputs, 1024², batch 1, cached latents
KOHYA_RECIPE = PlanOptions(family="sdxl", width=1024, height=1024, mixed_precision="bf16", full_half=True,
                           fused_backward_pass=True, gradient_checkpointing=True, optimizer="Adafactor",
                           cache_text_encoder_outputs="disk", cache_latents="disk")


def test_kohyas_low_memory_recipe_plans_under_24_gb():
    """Published with a fused backward pass: 10-13 GB (nvidia-smi, which counts the allocator's
    cache too); the planner's prediction must stay under a 24 GB card with its margin."""
    est = estimate_peak_vram(KOHYA_RECIPE)
    assert est.fits(budget_for_preset(24))
    assert est.breakdown["U-Net weights"] == pytest.approx(2 * 2_567_463_684)          # bf16 weights
    assert est.breakdown["optimizer states"] == pytest.approx(0.3807 * 2_567_463_684)  # factored Adafactor
    # cached outputs: neither encoder on the GPU; cached latents: no VAE
    assert not any(k.startswith(("text encoder", "VAE")) for k in est.breakdown)
    assert est.phase == "forward" and est.breakdown["activations"] == pytest.approx(0.724e9)


def test_frozen_encoders_stay_on_the_gpu_unless_their_outputs_are_cached():
    uncached = estimate_peak_vram(replace(KOHYA_RECIPE, cache_text_encoder_outputs="none"))
    assert uncached.breakdown["text encoder (frozen)"] == pytest.approx(2 * (TE1 + TE2))
    assert uncached.total_bytes > estimate_peak_vram(KOHYA_RECIPE).total_bytes
    memory = estimate_peak_vram(replace(KOHYA_RECIPE, cache_text_encoder_outputs="memory"))
    assert "text encoder (frozen)" not in memory.breakdown


def test_each_text_encoder_trains_on_its_own():
    o = PlanOptions(family="sdxl", width=1024, height=1024, mixed_precision="bf16", gradient_checkpointing=True,
                    optimizer="AdamW", train_text_encoder=True)
    both = estimate_peak_vram(o).breakdown
    assert both["text encoder (trained)"] == pytest.approx((TE1 + TE2) * 16)   # fp32 weights, grads, 2 states
    only_te2 = estimate_peak_vram(replace(o, trained_text_encoders=(False, True))).breakdown
    assert only_te2["text encoder (trained)"] == pytest.approx(TE2 * 16)
    assert only_te2["text encoder (frozen)"] == pytest.approx(TE1 * 2)         # TE1 still encodes, in bf16
    # a trained encoder's outputs change every step: caching them frees nothing
    cached = estimate_peak_vram(replace(o, cache_text_encoder_outputs="disk")).breakdown
    assert cached["text encoder (trained)"] == both["text encoder (trained)"]


def test_the_run_files_rates_say_which_encoder_trains():
    from engine.config.schema import RunConfig
    from engine.plan.estimate import _trained_text_encoders

    config = RunConfig()
    assert _trained_text_encoders(config, "sdxl") == (True, True)     # unset: learning_rate
    config.optimizer.learning_rate_te1 = 0.0
    assert _trained_text_encoders(config, "sdxl") == (False, True)
    assert _trained_text_encoders(config, "sd1") is None


def test_sdxl_has_no_attention_at_its_highest_resolution():
    """Classic attention's score matrices: SDXL's first attention level holds a quarter of the
    latent tokens, so at 1024² it costs far less than SD's layout would (attention at every level)."""
    o = PlanOptions(width=1024, height=1024, mixed_precision="bf16", gradient_checkpointing=False)
    extra = {fam: estimate_peak_vram(replace(o, family=fam, attention="math")).total_bytes
             - estimate_peak_vram(replace(o, family=fam)).total_bytes for fam in ("sd1", "sdxl")}
    assert 0 < extra["sdxl"] < extra["sd1"] / 4
    assert coefficients("sdxl").attention_levels[0][0] == 4


def test_activations_grow_with_the_pixels_from_1024():
    o = replace(KOHYA_RECIPE, gradient_checkpointing=False)
    at_1024 = estimate_peak_vram(o).breakdown["activations"]
    assert at_1024 == pytest.approx(6.89e9)   # measured (engine/families/sdxl/plan.py)
    at_2048x1024 = estimate_peak_vram(replace(o, width=2048)).breakdown["activations"]
    assert at_2048x1024 == pytest.approx(2 * at_1024)


def test_fp32_vae_and_its_1024_activations():
    """SDXL's VAE runs in fp32 by default (kohya's --no_half_vae): its weights, and the encoder's
    activations at 1024² when latents are not cached, or the decoder's for a preview."""
    o = replace(KOHYA_RECIPE, cache_latents="none")
    est = estimate_peak_vram(o)
    assert est.breakdown["VAE (frozen)"] == pytest.approx(83.65e6 * 4)
    encoding = 0.67e9 * 4                       # four 512² images' worth of pixels, fp32
    assert est.phase == "encoding latents" and est.breakdown["VAE encoder activations"] == pytest.approx(encoding)
    half = estimate_peak_vram(replace(o, vae_dtype="bf16"))
    assert half.breakdown["VAE (frozen)"] == pytest.approx(83.65e6 * 2)
    sampled = estimate_peak_vram(replace(KOHYA_RECIPE, sample=True))
    assert sampled.phase == "sampling" and sampled.fits(budget_for_preset(24))


def test_no_hypernetworks_for_sdxl():
    with pytest.raises(ValueError, match="hypernetworks are not built for SDXL"):
        hypernetwork_params("sdxl")


def test_caching_text_encoder_outputs_is_suggested_for_sdxl_only():
    o = replace(KOHYA_RECIPE, cache_text_encoder_outputs="none", batch_size=8, gradient_checkpointing=False)
    texts = [s.config_changes for s in suggest(o, 12 * GIB)]
    assert any(c.get("cache.text_encoder_outputs") == "disk" for c in texts)
    sd = [s.config_changes for s in suggest(replace(o, family="sd1"), 2 * GIB)]
    assert not any("cache.text_encoder_outputs" in c for c in sd)


def test_sdxl_presets_by_card_and_kohyas_bucket_defaults():
    assert sorted(presets_for("sdxl")) == [24, 48, 80]
    assert preset_for(23.6 * GIB, "sdxl") == 24 and preset_for(47.5 * GIB, "sdxl") == 48
    assert preset_for(79.2 * GIB, "sdxl") == 80 and preset_for(11.7 * GIB, "sdxl") == 24
    assert preset_for(None, "sdxl") == 24 and preset_for(79.2 * GIB) == 48      # SD's stop at 48
    with pytest.raises(ValueError, match="no 12 GB preset for SDXL: choose one of 24 GB, 48 GB, 80 GB"):
        preset_values(12, family="sdxl")
    for values in presets_for("sdxl").values():
        assert (values["general.resolution"], values["general.min_bucket_reso"], values["general.max_bucket_reso"],
                values["general.bucket_reso_steps"], values["general.enable_bucket"]) == (1024, 512, 2048, 64, True)
        o = apply_preset_to_options(PlanOptions(family="sdxl"), values)
        assert (o.width, o.height) == (1024, 1024)
    low = presets_for("sdxl")[24]
    assert low["memory.full_bf16"] and low["memory.fused_backward_pass"] and low["optimizer.type"] == "Adafactor"


def _write_sdxl_folder(folder: Path) -> Path:
    from engine.families.sdxl.configs import builtin_config

    for part in ("unet", "text_encoder", "text_encoder_2"):
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(builtin_config(part)))
    return folder


def test_sdft_plan_names_the_family_from_the_models_configs(tmp_path):
    from engine.config.schema import RunConfig
    from engine.plan import plan_report
    from engine.plan.estimate import family_of_config

    model = _write_sdxl_folder(tmp_path / "xl")
    config = RunConfig(base_dir=str(tmp_path))
    config.model.pretrained_model_name_or_path = "xl"        # beside the run file
    assert family_of_config(config) == "sdxl"
    report = plan_report(config, vram_gb=24)
    assert "for a full-size SDXL model, 1024x1024, batch 1" in report.splitlines()[0]
    sd = RunConfig(base_dir=str(tmp_path))
    assert "full-size SD 1.x model, 512x512" in plan_report(sd, vram_gb=24)
    assert model.is_dir()


# ------------------------------------------------------------------ README's table

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_rows() -> dict[str, tuple[float, float]]:
    """README's "SDXL: the planner's prediction" rows: {label: (peak GB, with previews GB)}."""
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- sdxl-plan-table -->")[1]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"[\d.]+ GB", cells[-2]):
            rows[cells[0]] = (float(cells[-2].split()[0]), float(cells[-1].split()[0]))
    return rows


def test_readme_gives_the_planners_sdxl_peaks():
    rows = _readme_rows()
    expected = {f"{size} GB preset": apply_preset_to_options(PlanOptions(family="sdxl"), values)
                for size, values in presets_for("sdxl").items()}
    expected["kohya's low-memory recipe"] = KOHYA_RECIPE
    assert set(rows) == set(expected)
    for label, options in expected.items():
        peak = estimate_peak_vram(options).total_bytes / 1e9
        sampled = estimate_peak_vram(replace(options, sample=True)).total_bytes / 1e9
        assert rows[label] == (round(peak, 1), round(sampled, 1)), label


def test_sdft_plan_says_what_it_has_no_figures_for(tmp_path, capsys):
    from engine.cli import main

    _write_sdxl_folder(tmp_path / "xl")
    run = tmp_path / "run.toml"
    (tmp_path / "img").mkdir()
    run.write_text('[model]\npretrained_model_name_or_path = "xl"\n[train]\nmode = "hypernetwork"\n'
                   '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\n', encoding="utf-8")
    assert main(["plan", str(run), "--vram", "24"]) == 2
    assert "sdft plan: hypernetworks are not built for SDXL" in capsys.readouterr().err

"""Built-in real-size configs: key layout and shape inference, checked on the meta device (no memory)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _meta_state(ctor):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return ctor().state_dict()


@pytest.mark.parametrize("family", ["sd1", "sd2-base", "sd2-768-v"])
def test_real_size_layout_and_inference(family):
    from engine.models import convert as cv
    from engine.models.configs import builtin_config
    from engine.models.infer import infer_text_config, infer_unet_config, infer_vae_config, sd2_text_layers
    from engine.models.load import text_ctor, unet_ctor, vae_ctor

    v2, v = family != "sd1", family == "sd2-768-v"
    ucfg, vcfg, tcfg = (builtin_config(family, c) for c in ("unet", "vae", "text_encoder"))
    unet, vae, text = _meta_state(unet_ctor(ucfg)), _meta_state(vae_ctor(vcfg)), _meta_state(text_ctor(tcfg))
    sd = cv.diffusers_to_original(unet, vae, text, v2=v2)
    # well-known names and shapes of the published SD checkpoints
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    assert sd["model.diffusion_model.input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert sd["model.diffusion_model.output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert sd["model.diffusion_model.output_blocks.8.2.conv.weight"].shape == (640, 640, 3, 3)
    assert sd["model.diffusion_model.middle_block.1.proj_out.weight"].ndim == (2 if v2 else 4)
    assert sd["first_stage_model.decoder.up.3.block.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    if v2:
        assert sd["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (3072, 1024)
        assert "cond_stage_model.model.transformer.resblocks.23.ln_1.weight" in sd
        assert sd["cond_stage_model.model.text_projection"].shape == (1024, 1024)
    else:
        assert sd["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"].shape == (768, 3072)

    parts = cv.split_original(sd)
    assert infer_unet_config(parts["unet"], v2=v2, v_parameterization=v) == ucfg
    assert infer_vae_config(parts["vae"], v2=v2, v_parameterization=v) == vcfg
    if v2:
        n = sd2_text_layers(parts["text_sd2"])
        assert n == 23
        hf, extras = cv.text_sd2_from_original(parts["text_sd2"], n)
        assert "cond_stage_model.model.transformer.resblocks.23.ln_1.weight" in extras
    else:
        hf = {cv.strip_text_model_prefix(k): t for k, t in parts["text_sd1"].items()}
    got = infer_text_config(hf, v2=v2)
    assert {k: got[k] for k in tcfg} == tcfg


def test_scheduler_configs():
    from engine.models.configs import scheduler_config
    from engine.models.load import training_scheduler

    assert scheduler_config(True, True)["prediction_type"] == "v_prediction"
    s = training_scheduler(False, False)
    assert (s.config.beta_schedule, s.config.beta_start, s.config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon"

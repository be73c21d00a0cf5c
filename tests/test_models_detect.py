"""SD1/SD2 and v-prediction detection from every source, EMA, VAE override."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models_helpers import assert_same_weights, read_file, save_tiny_single, tiny, write_file  # noqa: E402

from engine.models.errors import ModelLoadError  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("detect")
    return {f: read_file(save_tiny_single(d / f"{f}.safetensors", f)) for f in ("sd1", "sd2")}


def _plain(tmp_path, files, flavour, name="plain.safetensors", edit=None, keep_meta=()):
    """The tiny file with no metadata (like a file from another tool), optionally edited."""
    tensors, md = files[flavour]
    tensors = dict(tensors)
    if edit:
        edit(tensors)
    return write_file(tmp_path / name, tensors, {k: md[k] for k in keep_meta} or None)


def test_v2_detected_from_keys_even_at_tiny_widths(tmp_path, files):
    from engine.models.load import load_model

    m1 = load_model(str(_plain(tmp_path, files, "sd1", "a.safetensors")))
    m2 = load_model(str(_plain(tmp_path, files, "sd2", "b.safetensors")))
    assert (m1.v2, m2.v2) == (False, True)
    assert "cond_stage_model.model" in m2.report[0] and "model.v2" in m2.report[0]
    assert m1.v_parameterization is False and "SD 1.x" in m1.report[1]


def test_user_setting_wins_over_metadata(tmp_path, files):
    from engine.models.load import load_model

    path = _plain(tmp_path, files, "sd2", keep_meta=("modelspec.prediction_type", "sdft.unet_config"))
    auto = load_model(str(path))
    assert auto.v_parameterization is True and "metadata" in auto.report[1]
    forced = load_model(str(path), v_parameterization=False)
    assert forced.v_parameterization is False
    assert "your setting model.v_parameterization = false" in forced.report[1]
    assert forced.noise_scheduler.config.prediction_type == "epsilon"


def test_sdft_metadata_key_is_read(tmp_path, files):
    from engine.models.load import load_model

    tensors, _ = files["sd1"]
    path = write_file(tmp_path / "m.safetensors", dict(tensors), {"sdft.v_parameterization": "true"})
    m = load_model(str(path))
    assert m.v_parameterization is True and "sdft.v_parameterization" in m.report[1]


def test_scheduler_config_of_a_diffusers_folder(tiny_sd1, tiny_sd2):
    from engine.models.load import load_model

    m1, m2 = load_model(str(tiny_sd1)), load_model(str(tiny_sd2))
    assert (m1.v2, m1.v_parameterization) == (False, False)
    assert (m2.v2, m2.v_parameterization) == (True, True)
    assert "scheduler_config.json" in m2.report[1]
    assert m2.base_sha256 is None and m2.base_name == "sd2"


@pytest.mark.parametrize("bias,expected", [(-5.0, True), (0.0, False)])
def test_sd2_forward_test_when_nothing_else_says(tmp_path, files, bias, expected):
    """A1111's check: output pulled strongly negative at t=999 on a 0.5 input means v."""
    from engine.models.load import load_model

    def edit(t):
        t["model.diffusion_model.out.2.weight"] = torch.zeros_like(t["model.diffusion_model.out.2.weight"])
        t["model.diffusion_model.out.2.bias"] = torch.full_like(t["model.diffusion_model.out.2.bias"], bias)

    m = load_model(str(_plain(tmp_path, files, "sd2", edit=edit)))
    assert m.v2 is True
    assert m.v_parameterization is expected
    assert "forward pass" in m.report[1]


def test_wrong_v2_setting_is_explained(tmp_path, files):
    from engine.models.load import load_model

    with pytest.raises(ModelLoadError, match="model.v2 = false"):
        load_model(str(_plain(tmp_path, files, "sd2")), v2=False)
    with pytest.raises(ModelLoadError, match="model.v2 = true"):
        load_model(str(_plain(tmp_path, files, "sd1")), v2=True)


def test_old_sd1_text_keys_without_text_model(tmp_path, files):
    from engine.models.load import load_model

    def edit(t):
        for k in [k for k in t if k.startswith("cond_stage_model.transformer.text_model.")]:
            t[k.replace(".text_model.", ".", 1)] = t.pop(k)
        t["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None]

    m = load_model(str(_plain(tmp_path, files, "sd1", edit=edit, keep_meta=("sdft.text_config",))))
    assert_same_weights(tiny("sd1")["text_encoder"], m.text_encoder)


def test_ema_weights_are_reported_and_selectable(tmp_path, files):
    from engine.models.load import load_model

    def edit(t):
        for k in [k for k in t if k.startswith("model.diffusion_model.")]:
            t["model_ema.diffusion_model" + k[len("model.diffusion_model."):].replace(".", "")] = t[k] + 1
        t["model_ema.num_updates"] = torch.tensor(10)

    path = _plain(tmp_path, files, "sd1", edit=edit, keep_meta=("sdft.unet_config",))
    regular = load_model(str(path))
    assert regular.has_ema and any("model.use_ema_weights" in line for line in regular.report)
    assert_same_weights(tiny("sd1")["unet"], regular.unet)
    ema = load_model(str(path), use_ema=True)
    ref = tiny("sd1")["unet"].state_dict()["conv_in.weight"]
    assert torch.equal(ema.unet.state_dict()["conv_in.weight"], ref + 1)


def test_separate_vae_override(tmp_path, files):
    from safetensors.torch import save_file

    from engine.models.load import load_model

    other = tiny("sd1", seed=1)["vae"]
    vae_file = tmp_path / "vae.safetensors"      # diffusers layout, as vae/diffusion_pytorch_model.safetensors
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(vae_file))
    path = _plain(tmp_path, files, "sd1", keep_meta=("sdft.vae_config",))
    m = load_model(str(path), vae=str(vae_file))
    assert_same_weights(other, m.vae)
    assert any("model.vae" in line for line in m.report)

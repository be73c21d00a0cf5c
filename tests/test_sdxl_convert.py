"""``sdft convert`` for SDXL, every direction, and how the family is found before loading."""

from __future__ import annotations

import pytest
import torch
from sdxl_helpers import tiny_sdxl_parts

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def _assert_same(model, parts, dtype=None) -> None:
    for name in PARTS:
        got = {k.removeprefix("text_model."): v for k, v in getattr(model, name).state_dict().items()}
        for key, value in parts[name].state_dict().items():
            value = value if dtype is None else value.to(dtype).float()
            assert torch.equal(got[key.removeprefix("text_model.")], value), (name, key)


@pytest.fixture
def tiny_folder(tiny_sdxl_folder):
    """The folder of ``tiny_sdxl_parts(1)``, saved once per worker (tests/conftest.py): tests copy
    it before changing it."""
    return tiny_sdxl_folder(1)


def test_convert_all_ways_bit_for_bit(tmp_path, tiny_folder, capsys):
    from engine.families.convert_cli import convert_command
    from engine.families.sdxl.adapter import SDXL

    want = tiny_sdxl_parts(1)
    single = tmp_path / "a.safetensors"
    assert convert_command([str(tiny_folder), str(single)]) == 0
    out = capsys.readouterr().out
    assert "SDXL" in out and "fp32" in out and "epsilon prediction" in out   # the source's own precision
    ckpt = tmp_path / "b.ckpt"
    assert convert_command([str(single), str(ckpt)]) == 0
    folder = tmp_path / "c"
    assert convert_command([str(ckpt), str(folder), "--to", "diffusers"]) == 0
    back = SDXL.load(str(folder))
    _assert_same(back, want)
    # the tiny sizes travel in the metadata: heads and groups survive the single file
    assert back.unet.config.attention_head_dim == list(want["unet"].config.attention_head_dim)
    assert back.text_encoder_2.config.num_attention_heads == want["text_encoder_2"].config.num_attention_heads
    half = tmp_path / "d.safetensors"
    assert convert_command([str(folder), str(half), "--precision", "fp16"]) == 0
    _assert_same(SDXL.load(str(half)), want, dtype=torch.float16)


def test_convert_refuses_as_for_sd(tmp_path, tiny_folder, capsys):
    from engine.families.convert_cli import convert_command

    out = tmp_path / "a.safetensors"
    out.write_bytes(b"keep me")
    assert convert_command([str(tiny_folder), str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert convert_command([str(tiny_folder), str(out), "--force"]) == 0 and out.stat().st_size > 1000
    assert convert_command([str(out), str(out), "--force"]) == 2
    assert "the output is the input" in capsys.readouterr().err
    assert convert_command([str(tiny_folder), str(tmp_path / "x.safetensors"), "--v2"]) == 2
    assert "model.v2 = true names an SD 2.x model, but this is SDXL" in capsys.readouterr().err


def test_convert_sets_and_keeps_v_prediction(tmp_path, tiny_folder, capsys):
    from safetensors import safe_open

    from engine.families.convert_cli import convert_command
    from engine.families.sdxl.adapter import SDXL

    v = tmp_path / "v.safetensors"
    assert convert_command([str(tiny_folder), str(v), "--v-parameterization"]) == 0
    assert "v prediction" in capsys.readouterr().out
    with safe_open(str(v), "pt") as f:
        assert "v_pred" in f.keys() and f.metadata()["modelspec.prediction_type"] == "v"
    folder = tmp_path / "v_folder"
    assert convert_command([str(v), str(folder)]) == 0
    assert SDXL.load(str(folder)).v_parameterization is True


def test_sdxl_is_found_before_loading_and_loads_for_training(tmp_path, tiny_folder):
    """Folders by their U-Net config, .safetensors by the header, .ckpt by the weights-only
    unpickler's view; runs and ``sdft convert`` load it through the SDXL adapter."""
    from engine.families.sdxl.adapter import SDXL
    from engine.families.sources import detect_family, load_any, load_base

    model = SDXL.load(str(tiny_folder))
    single = SDXL.save(tmp_path / "m.safetensors", model, v_prediction=False, fmt="safetensors", precision="fp16")
    ckpt = SDXL.save(tmp_path / "m.ckpt", model, v_prediction=False, fmt="ckpt", precision="fp16")
    for source in (tiny_folder, single, ckpt):
        assert detect_family(source) is SDXL
        assert load_base(str(source), hash_file=False).family == "sdxl"
        assert load_any(str(source), hash_file=False).family == "sdxl"


def test_a_hub_id_offline_names_the_download(monkeypatch):
    from engine.families.sources import load_any
    from engine.models.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline.*hf download someone/sdxl-model"):
        load_any("someone/sdxl-model")


def test_a_hub_id_is_downloaded_with_every_family_s_parts_then_detected(monkeypatch, tiny_folder):
    from engine.families.sources import load_any, load_base
    from engine.models import load

    asked = []

    def download(repo_id, parts):
        asked.append((repo_id, parts))
        return tiny_folder

    monkeypatch.setattr(load, "download_hub", download)
    model = load_any("someone/my-sdxl", hash_file=False)
    assert model.family == "sdxl" and model.source == "someone/my-sdxl" and model.base_name == "my-sdxl"
    assert model.report[0] == "downloaded someone/my-sdxl from the Hugging Face hub"
    assert {"text_encoder_2", "tokenizer_2", "unet", "vae", "text_encoder"} <= set(asked[0][1])
    assert load_base("someone/my-sdxl").family == "sdxl"


def test_ema_weights_in_a_folder_are_reported_and_trained_on_request(tmp_path, tiny_folder):
    import shutil

    from engine.families.sdxl.adapter import SDXL

    folder = shutil.copytree(tiny_folder, tmp_path / "ema")
    ema = tiny_sdxl_parts(2)["unet"]   # another seed than the folder's U-Net
    ema.save_pretrained(folder / "unet_ema")
    plain = SDXL.load(str(folder))
    assert not plain.has_ema and any("EMA weights present (unet_ema/): training the regular" in x for x in plain.report)
    chosen = SDXL.load(str(folder), use_ema=True)
    assert chosen.has_ema and torch.equal(chosen.unet.conv_in.weight, ema.conv_in.weight)

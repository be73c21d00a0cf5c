"""Every load error says what is wrong and what to do; unsafe pickles never run."""

from __future__ import annotations

import datetime
import shutil
import sys
import types

import pytest

torch = pytest.importorskip("torch")

from models_helpers import Evil, assert_same_weights, read_file, save_tiny_single, tiny, write_file  # noqa: E402

from engine.models.errors import ModelLoadError  # noqa: E402


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return read_file(save_tiny_single(tmp_path_factory.mktemp("err") / "sd1.safetensors", "sd1"))


def _load(path, **kw):
    from engine.models.load import load_model

    return load_model(str(path), **kw)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, sd1):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd1[0], "payload": Evil(marker)}, path)
    with pytest.raises(ModelLoadError, match="allow-unsafe-pickle") as err:
        _load(path)
    assert "system" in str(err.value)  # names what the pickle wanted to call
    assert not marker.exists()


def test_unsafe_pickle_loads_only_when_allowed(tmp_path, sd1):
    path = tmp_path / "dated.ckpt"
    torch.save({"state_dict": sd1[0], "saved_on": datetime.date(2023, 1, 1)}, path)
    with pytest.raises(ModelLoadError, match="datetime.date"):
        _load(path)
    m = _load(path, allow_unsafe_pickle=True)
    assert any("UNSAFE" in line for line in m.report)


def test_legacy_lightning_checkpoint_loads(tmp_path, sd1, monkeypatch):
    """SD 1.x-era .ckpt files reference Lightning classes; those alone are stubbed."""
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
        monkeypatch.setitem(sys.modules, name, mod if name == mod.__name__ else types.ModuleType(name))
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd1[0], "global_step": 470000, "callbacks": {ModelCheckpoint: {"best": 1.0}}}, path)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
        monkeypatch.delitem(sys.modules, name)
    m = _load(path)
    assert_same_weights(tiny("sd1")["unet"], m.unet)
    assert any("470000" in line for line in m.report)


@pytest.mark.parametrize("name,content", [("junk.ckpt", b"hello, not a checkpoint\n"),
                                          ("junk.safetensors", b"\x00" * 64),
                                          ("notes.txt", b"just text")])
def test_not_a_checkpoint(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a"):
        _load(path)


@pytest.mark.parametrize("ext", ["safetensors", "ckpt"])
def test_truncated_file(tmp_path, ext):
    path = save_tiny_single(tmp_path / f"m.{ext}", "sd1", fmt=ext)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        _load(path)


def test_lora_file_is_not_a_base_model(tmp_path):
    path = write_file(tmp_path / "style.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }, {"ss_network_module": "networks.lora"})
    with pytest.raises(ModelLoadError, match="LoRA"):
        _load(path)


def test_sdxl_file_is_refused(tmp_path):
    path = write_file(tmp_path / "xl.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 8),
    })
    with pytest.raises(ModelLoadError, match="SDXL"):
        _load(path)


@pytest.mark.parametrize("channels,kind", [(9, "inpainting"), (8, "pix2pix")])
def test_inpainting_and_pix2pix_are_refused(tmp_path, sd1, channels, kind):
    tensors = dict(sd1[0])
    w = tensors["model.diffusion_model.input_blocks.0.0.weight"]
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(w.shape[0], channels, 3, 3)
    with pytest.raises(ModelLoadError, match=kind):
        _load(write_file(tmp_path / "x.safetensors", tensors))


@pytest.mark.parametrize("prefix,match", [("first_stage_model.", "no VAE"), ("cond_stage_model.", "no text encoder")])
def test_single_file_missing_a_component(tmp_path, sd1, prefix, match):
    tensors = {k: v for k, v in sd1[0].items() if not k.startswith(prefix)}
    with pytest.raises(ModelLoadError, match=match):
        _load(write_file(tmp_path / "x.safetensors", tensors))


def test_single_file_missing_unet_tensor(tmp_path, sd1):
    tensors = dict(sd1[0])
    del tensors["model.diffusion_model.middle_block.1.proj_out.weight"]
    with pytest.raises(ModelLoadError, match="middle_block.1.proj_out.weight"):
        _load(write_file(tmp_path / "x.safetensors", tensors, {"sdft.unet_config": sd1[1]["sdft.unet_config"]}))


def test_vae_file_given_as_base_model(tmp_path, sd1):
    tensors = {k[len("first_stage_model."):]: v for k, v in sd1[0].items() if k.startswith("first_stage_model.")}
    with pytest.raises(ModelLoadError, match="model.vae"):
        _load(write_file(tmp_path / "vae.safetensors", tensors))


def test_diffusers_folder_missing_a_component(tmp_path, tiny_sd1):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd1, folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelLoadError, match="vae/"):
        _load(folder)


def test_hub_id_offline_and_missing_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):
        _load("someone/some-model")
    with pytest.raises(ModelLoadError, match="no such file"):
        _load(tmp_path / "nothing.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        _load(empty)

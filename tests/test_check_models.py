"""`--check` reads model files as training will: safetensors headers (offsets, shapes, dtypes),
diffusers configs (named by file and key), pickles by the weights-only unpickler without
building the model. A file the check accepts starts training; bad model input exits 2
everywhere, `sdft convert` included."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from train_helpers import make_run

from engine.cli import main


class RunsCode:
    """A pickle that would run a shell command when loaded by a plain unpickler."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _check_model(tmp_path, tiny_sd1, model, capsys) -> tuple[int, str]:
    config = make_run(tmp_path, tiny_sd1)
    config.write_text(config.read_text().replace(str(tiny_sd1), str(model)))
    code = main(["train", str(config), "--check"])
    out = capsys.readouterr()
    return code, out.out + out.err


def _safetensors(path, tensors: dict, data: bytes) -> object:
    header = json.dumps(tensors).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_a_malicious_pickle_fails_the_check_and_runs_nothing(tmp_path, tiny_sd1, capsys):
    marker = tmp_path / "ran"
    model = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"a.weight": torch.zeros(2)}, "payload": RunsCode(marker)}, model)
    code, out = _check_model(tmp_path, tiny_sd1, model, capsys)
    assert code == 2 and "refused to load this .ckpt" in out and "system" in out
    assert not marker.exists()


def test_a_pickle_that_is_not_a_model_fails_the_check(tmp_path, tiny_sd1, capsys):
    model = tmp_path / "notes.ckpt"
    torch.save({"hello": 1, "weights": [1, 2]}, model)
    code, out = _check_model(tmp_path, tiny_sd1, model, capsys)
    assert code == 2 and "not a Stable Diffusion checkpoint" in out


@pytest.mark.parametrize("tensors, data, says", [
    ({"a.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}, b"\0" * 16, "claims bytes 0..64"),
    ({"a.weight": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "impossible shape"),
    ({"a.weight": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype 'F33'"),
    ({"a.weight": {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "an integer type"),
    ({"a.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b.weight": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24, "overlap"),
], ids=["bad offsets", "impossible shape", "unknown dtype", "integer weights", "overlapping tensors"])
def test_a_corrupt_safetensors_fails_the_check(tmp_path, tiny_sd1, capsys, tensors, data, says):
    model = _safetensors(tmp_path / "bad.safetensors", tensors, data)
    code, out = _check_model(tmp_path, tiny_sd1, model, capsys)
    assert code == 2 and says in out and "bad.safetensors" in out


@pytest.mark.parametrize("component, key, value", [
    ("unet", "block_out_channels", []),
    ("unet", "cross_attention_dim", -1),
    ("text_encoder", "num_attention_heads", 7),
    ("vae", "norm_num_groups", 3),
])
def test_an_implausible_diffusers_config_names_its_file_and_key_in_check_and_convert(
        tmp_path, tiny_sd1, capsys, component, key, value):
    model = shutil.copytree(tiny_sd1, tmp_path / "model")
    config_file = model / component / "config.json"
    config = json.loads(config_file.read_text())
    config[key] = value
    config_file.write_text(json.dumps(config))
    code, out = _check_model(tmp_path, tiny_sd1, model, capsys)
    assert code == 2 and f"{component}/config.json: {key} = " in out, out
    assert main(["convert", str(model), str(tmp_path / "out.safetensors")]) == 2
    assert f"{component}/config.json: {key} = " in capsys.readouterr().err


def test_a_damaged_component_weights_file_fails_the_check(tmp_path, tiny_sd1, capsys):
    model = shutil.copytree(tiny_sd1, tmp_path / "model")
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])   # cut short
    code, out = _check_model(tmp_path, tiny_sd1, model, capsys)
    assert code == 2 and "diffusion_pytorch_model.safetensors" in out and "truncated" in out


def test_a_sound_pickle_checkpoint_passes_and_is_probed(tmp_path, tiny_sd1, capsys):
    model = tmp_path / "model.ckpt"
    assert main(["convert", str(tiny_sd1), str(model), "--to", "ckpt"]) == 0
    capsys.readouterr()
    code, out = _check_model(tmp_path, tiny_sd1, model, capsys)
    assert code == 0, out
    assert "SD 1.x" in out, "read from the pickle's tensor shapes, as from a safetensors header"

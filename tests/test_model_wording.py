"""One wording for what a model is, whichever form it comes in; plan names it; counts read right."""

from __future__ import annotations

from train_helpers import make_run

from engine.cli import main
from engine.preflight.model import look_at_model
from engine.units import counted


def test_a_folder_and_a_single_file_of_one_tiny_model_are_described_alike(tmp_path, tiny_sd1, capsys):
    single = tmp_path / "tiny.safetensors"
    assert main(["convert", str(tiny_sd1), str(single)]) == 0
    lines = [next(line for line in look_at_model(str(path)).lines if line.startswith("model:"))
             for path in (tiny_sd1, single)]
    for line in lines:
        assert "model: SD 1.x, detected from the text encoder (CLIP, SD 1.x layout" in line, line
        assert "U-Net context width 32: a small test model, not full size" in line, line
        assert "ViT-L" not in line   # SD1's full-size encoder; this one is 32 wide


def test_plan_names_the_model_and_says_it_is_a_small_test_model(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    assert main(["plan", str(config), "--vram", "24"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"Model: {tiny_sd1}: SD 1.x") and "small test model" in first
    assert "figures below are for a full-size SD 1.x model" in first


def test_counts_take_the_right_number():
    assert counted(1, "sampling point") == "1 sampling point"
    assert counted(3, "sampling point") == "3 sampling points"
    assert counted(1, "error") == "1 error" and counted(0, "prompt") == "0 prompts"

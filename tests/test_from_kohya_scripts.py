"""kohya's other scripts are recognised by name: train_db.py converts (a fine-tune on kohya's
folder datasets, training the text encoder), sdxl_train.py converts (tests/test_from_kohya_sdxl.py),
train_network.py (LoRA) and the other trainers are refused as a whole; a GUI config for them too."""

from __future__ import annotations

import json

import pytest
from data_helpers import make_image

from engine.kohya.convert import from_command, from_config_file, report_lines
from engine.kohya.scripts import NotConvertible


def _layout(root) -> None:
    for i in range(2):
        make_image(root / "img" / "20_sks dog" / f"a{i}.png", (64, 64), seed=i)
    make_image(root / "img" / "3_sks cat" / "c.png", (64, 64), seed=5)
    make_image(root / "reg" / "1_dog" / "r.png", (64, 64), seed=6)


def test_train_db_converts_its_folders_into_subsets_and_trains_the_text_encoder(tmp_path, monkeypatch):
    _layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    conversion = from_command(["accelerate", "launch", r"C:\kohya\sd-scripts\train_db.py",
                               "--train_data_dir=img", "--reg_data_dir", "reg", "--caption_extension=.txt",
                               "--learning_rate_te", "1e-6", "--in_json", "meta.json", "--no_token_padding"])
    assert conversion.script == "train_db.py"
    assert conversion.document["datasets"] == [{"subsets": [
        {"image_dir": "img/20_sks dog", "num_repeats": 20, "class_tokens": "sks dog"},
        {"image_dir": "img/3_sks cat", "num_repeats": 3, "class_tokens": "sks cat"},
        {"image_dir": "reg/1_dog", "num_repeats": 1, "class_tokens": "dog", "is_reg": True}]}]
    assert conversion.document["train"] == {"train_text_encoder": True}
    assert conversion.document["optimizer"] == {"learning_rate_te": 1e-6}
    assert conversion.document["data"] == {"caption_extension": ".txt"}
    why = {r.option: r.refused for r in conversion.refused}
    assert why["in_json"] == "not an option of kohya's train_db.py"
    assert "unpadded" in why["no_token_padding"]

    frozen = from_command(["train_db.py", "--train_data_dir", "img", "--stop_text_encoder_training", "-1"])
    assert "train" not in frozen.document
    stops = from_command(["train_db.py", "--train_data_dir", "img", "--stop_text_encoder_training", "300"])
    assert stops.document["train"] == {"train_text_encoder": True, "stop_text_encoder_training": 300}
    missing = from_command(["train_db.py", "--train_data_dir", "nowhere"])
    assert "not here to read its N_name sub-folders" in missing.refused[0].refused
    weighted = from_command(["train_db.py", "--train_data_dir", "img", "--prior_loss_weight", "0.5"])
    assert "0.5 is not in sdft yet" in {r.option: r.refused for r in weighted.refused}["prior_loss_weight"]


@pytest.mark.parametrize("script, says", [
    ("sd3_train.py", "fine-tunes SD3, which sdft does not train yet: it trains SD 1.x, 2.x and SDXL"),
    ("train_network.py", "LoRA-style network added to the model"),
    ("sdxl_train_network.py", "for SDXL, not a full fine-tune"),
    ("train_textual_inversion.py", "textual-inversion embedding"),
    ("flux_train.py", "fine-tunes FLUX.1"),
    ("gen_img.py", "not a trainer"),
])
def test_other_kohya_scripts_are_refused_as_a_whole(tmp_path, capsys, script, says):
    from engine.kohya.cli import from_kohya_command

    with pytest.raises(NotConvertible, match=says):
        from_command(["accelerate", "launch", f"sd-scripts/{script}", "--learning_rate=1e-5"])
    out = tmp_path / "run.toml"
    assert from_kohya_command(["-o", str(out), "--", "python", script, "--learning_rate=1e-5"]) == 2
    assert says in capsys.readouterr().err and not out.exists()


def test_an_unknown_script_is_read_as_fine_tune_and_said_so():
    conversion = from_command(["python", "my_fine_tune.py", "--learning_rate=1e-5"])
    assert conversion.script == "my_fine_tune.py" and conversion.document["optimizer"] == {"learning_rate": 1e-5}
    assert "read as fine_tune.py's" in dict((line[0], line[2]) for line in report_lines(conversion))["my_fine_tune.py"]


@pytest.mark.parametrize("fields, says", [
    ({"LoRA_type": "Standard", "network_dim": 8}, "train_network.py"),
    ({"LoRA_type": "Standard", "sdxl": True}, "sdxl_train_network.py"),
    ({"token_string": "sks", "init_word": "*"}, "train_textual_inversion.py"),
    ({"sd3_checkbox": True, "train_data_dir": "img"}, "sd3_train.py: sd3_train.py fine-tunes SD3"),
    ({"flux1_checkbox": True, "train_dir": "x"}, "flux_train.py"),
])
def test_a_gui_config_for_another_method_is_refused_the_same_way(tmp_path, fields, says):
    path = tmp_path / "gui.json"
    path.write_text(json.dumps({"pretrained_model_name_or_path": "m", "optimizer": "AdamW", **fields}))
    with pytest.raises(NotConvertible, match=f"for {says}"):
        from_config_file(path)


def test_a_config_file_of_train_db_is_told_by_its_options(tmp_path, monkeypatch):
    _layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    written = tmp_path / "config_dreambooth.toml"   # the kohya_ss GUI's TOML for train_db.py, in short
    written.write_text('train_data_dir = "img"\nreg_data_dir = "reg"\nepoch = 3\nnoise_offset_type = "Original"\n'
                       'learning_rate = 1e-6\ntypo_optoin = 2\n', encoding="utf-8")
    conversion = from_config_file(written)
    assert conversion.script == "train_db.py"
    assert len(conversion.document["datasets"][0]["subsets"]) == 3
    lines = {line[0]: line[1:] for line in report_lines(conversion)}
    assert "it holds reg_data_dir" in lines["train_db.py"][1]
    assert lines["--epoch"] == ("left out", "a kohya_ss GUI field, which kohya ignores in a config file")
    assert lines["--typo_optoin"] == ("refused", "not an option of kohya's train_db.py")

    folders_only = tmp_path / "folders.toml"
    folders_only.write_text('train_data_dir = "img"\n', encoding="utf-8")
    assert from_config_file(folders_only).script == "train_db.py", "N_name folders and no in_json"
    metadata = tmp_path / "metadata.toml"
    metadata.write_text('train_data_dir = "img"\nin_json = "meta.json"\n', encoding="utf-8")
    assert from_config_file(metadata).script == "fine_tune.py"

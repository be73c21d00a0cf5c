"""sdft from-kohya reads the kohya_ss GUI's JSON configs (by content, whatever the extension) and
translates the GUI's own keys as the GUI does before it launches kohya: optimizer, resolution,
the warm-up percentage, epochs to steps from the image count, the fine-tune tab's folders and
metadata names; every key gets a row."""

from __future__ import annotations

import json

import pytest
from data_helpers import make_image

from engine.kohya.convert import from_config_file, report_lines


def _gui(tmp_path, fields: dict, name: str = "config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(fields), encoding="utf-8")
    return from_config_file(path)


def _images(folder, count: int) -> None:
    for i in range(count):
        make_image(folder / f"im{i}.png", (64, 64), seed=i)


DREAMBOOTH = {"pretrained_model_name_or_path": "model", "train_data_dir": "", "reg_data_dir": "",
              "prior_loss_weight": 1, "optimizer": "AdamW", "max_resolution": "512,512", "epoch": 0,
              "train_batch_size": 1, "lr_warmup": 0, "xformers": "xformers"}


@pytest.mark.parametrize("name", ["config.json", "config.toml", "saved_settings"])
def test_a_gui_config_is_read_by_its_content_whatever_its_name(tmp_path, name):
    conversion = _gui(tmp_path, {**DREAMBOOTH, "optimizer": "Lion", "max_resolution": "768,512"}, name)
    assert conversion.script == "train_db.py"
    assert conversion.document["optimizer"]["type"] == "Lion"
    assert conversion.document["general"]["resolution"] == [768, 512]
    labels = {line[0] for line in report_lines(conversion)}
    assert {"optimizer", "max_resolution", "xformers"} <= labels, "the table names the GUI's keys"


def test_files_that_are_not_gui_configs_say_what_they_are(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"optimizer": "AdamW",\n "epoch": }', encoding="utf-8")
    with pytest.raises(ValueError, match=r"not valid JSON \(line 2, column 11"):
        from_config_file(broken)
    odd = tmp_path / "odd.toml"
    odd.write_text("this is = = not toml", encoding="utf-8")
    with pytest.raises(ValueError, match="neither a kohya config TOML .* nor a kohya_ss GUI config"):
        from_config_file(odd)
    listed = tmp_path / "list.json"
    listed.write_text('[{"optimizer": "AdamW"}]', encoding="utf-8")
    with pytest.raises(ValueError, match="holds a JSON list; a kohya_ss GUI config is a JSON object"):
        from_config_file(listed)
    with pytest.raises(ValueError, match="dataset config"):
        _gui(tmp_path, {"datasets": [{"subsets": [{"image_dir": "x"}]}]})
    with pytest.raises(ValueError, match="metadata file"):
        _gui(tmp_path, {"a.png": {"caption": "a cat"}, "b.png": {"tags": "dog"}})


def test_the_guis_own_keys_are_translated_as_the_gui_does(tmp_path):
    conversion = _gui(tmp_path, {**DREAMBOOTH, "optimizer": "AdamW", "lr_warmup": 10, "lr_scheduler": "cosine",
                                 "seed": 0, "max_train_epochs": "", "xformers": "sdpa", "learning_rate": "2e-06",
                                 "optimizer_args": "weight_decay=0.02 betas=0.9,0.99", "clip_skip": 2,
                                 "additional_parameters": "--max_grad_norm=0.3 --seed 7 --bogus 1",
                                 "sample_prompts": "a dog, sitting\n\na cat --w 64", "sample_every_n_steps": 50,
                                 "use_wandb": True, "vae_batch_size": 0})
    doc = conversion.document
    assert doc["optimizer"]["lr_warmup_steps"] == 0.1, "the GUI's warm-up percentage is a fraction of the steps"
    assert doc["optimizer"]["args"] == {"weight_decay": 0.02, "betas": [0.9, 0.99]}
    assert "learning_rate" not in doc["optimizer"], "kohya's default, as the GUI writes it, is left out"
    assert doc["memory"]["attention"] == "sdpa" and doc["model"]["clip_skip"] == 2
    assert doc["optimizer"]["max_grad_norm"] == 0.3 and doc["train"]["seed"] == 7, "additional_parameters win"
    assert doc["sample"]["prompts"] == ["a dog, sitting", "a cat --w 64"]
    assert doc["logging"]["log_with"] == "wandb"
    assert "vae_batch_size" not in doc.get("cache", {}), "0 is the GUI's 'not set'"
    lines = {line[0]: line[1:] for line in report_lines(conversion)}
    assert lines["additional_parameters --bogus"][0] == "refused"
    assert lines["vae_batch_size"] == ("left out", "0: the GUI leaves the option out (not set)")
    steps = _gui(tmp_path, {**DREAMBOOTH, "lr_warmup": 10, "lr_warmup_steps": 25, "lr_scheduler": "cosine"})
    assert steps.document["optimizer"]["lr_warmup_steps"] == 25, "the GUI's warm-up steps override the percentage"


def test_every_key_of_a_gui_config_is_converted_left_out_or_refused(tmp_path):
    fields = {**DREAMBOOTH, "model_list": "custom", "sd3_checkbox": False, "t5xxl": "", "num_processes": 2,
              "multi_gpu": True, "dynamo_backend": "inductor", "dynamo_mode": "max-autotune", "noise_offset_type":
              "Original", "a_future_gui_key": 1, "learning_rate_te1": 1e-5, "save_as_bool": False,
              "train_inpainting": False}
    conversion = _gui(tmp_path, fields)
    lines = {line[0]: line[1:] for line in report_lines(conversion)}
    for key in fields:
        assert key in lines, key
        went, why = lines[key]
        assert went and (went not in ("left out", "refused") or len(why) > 8), (key, went, why)
    assert lines["num_processes"][1] == "run it with: sdft train RUN.toml --gpus 2"
    assert lines["a_future_gui_key"][0] == "refused" and lines["dynamo_mode"][0] == "refused"
    assert conversion.document["memory"] == {"torch_compile": True, "dynamo_backend": "inductor",
                                             "attention": "xformers"}


def test_epochs_become_steps_from_the_image_count_as_the_gui_counts(tmp_path):
    _images(tmp_path / "img" / "10_sks dog", 3)
    _images(tmp_path / "img" / "2_sks cat", 2)
    _images(tmp_path / "img" / "notes", 4)            # not N_name: the GUI does not count it
    _images(tmp_path / "reg" / "1_dog", 2)
    base = {**DREAMBOOTH, "train_data_dir": "img", "epoch": 2, "train_batch_size": 4}
    steps = _gui(tmp_path, base).document["train"]["max_train_steps"]
    assert steps == 17                                # ceil((10·3 + 2·2) / 4 × 2)
    with_reg = _gui(tmp_path, {**base, "reg_data_dir": "reg", "gradient_accumulation_steps": 2})
    assert with_reg.document["train"]["max_train_steps"] == 17   # × 2 for regularization, / 2 accumulation
    note = next(line[2] for line in report_lines(with_reg) if line[0] == "epoch")
    assert "doubled for regularization images" in note

    _images(tmp_path / "ft_images", 5)
    tab = {"pretrained_model_name_or_path": "model", "train_dir": "ft", "image_folder": "ft_images",
           "caption_metadata_filename": "meta_cap.json", "dataset_repeats": "3", "train_batch_size": 2,
           "epoch": "4", "max_train_steps": ""}
    assert _gui(tmp_path, tab).document["train"]["max_train_steps"] == 30      # ceil(5·3 / 2 × 4)
    assert _gui(tmp_path, {**tab, "flip_aug": True}).document["train"]["max_train_steps"] == 15

    unknown = _gui(tmp_path, {**base, "train_data_dir": "elsewhere"}).document["train"]
    assert unknown == {"max_train_epochs": 2, "train_text_encoder": True}, "no folder to count: the epochs"
    given = _gui(tmp_path, {**base, "max_train_steps": 40}).document["train"]
    assert given["max_train_steps"] == 40


def test_the_fine_tune_tabs_folders_and_metadata_names(tmp_path):
    _images(tmp_path / "pics", 2)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "meta_lat.json").write_text("{}")
    tab = {"pretrained_model_name_or_path": "model", "train_dir": "work", "image_folder": "pics",
           "caption_metadata_filename": "meta_cap.json", "latent_metadata_filename": "meta_lat.json",
           "use_latent_files": "Yes", "create_caption": False, "caption_extension": ".txt", "full_path": True}
    conversion = _gui(tmp_path, tab)
    assert conversion.script == "fine_tune.py"
    assert conversion.document["datasets"] == [{"subsets": [{"image_dir": "pics",
                                                             "metadata_file": "work/meta_lat.json"}]}]
    assert conversion.document["general"] == {"enable_bucket": True}, "the fine-tune tab always buckets"
    lines = {line[0]: line[1:] for line in report_lines(conversion)}
    assert lines["full_path"][0] == "left out" and "keys" in lines["full_path"][1]

    # the GUI would build meta_cap.json from the .txt files before the run; it is not there: read them
    rebuilt = _gui(tmp_path, {**tab, "use_latent_files": "No", "create_caption": True})
    assert rebuilt.document["datasets"] == [{"subsets": [{"image_dir": "pics"}]}]
    assert rebuilt.document["data"] == {"caption_extension": ".txt"}
    note = {line[0]: line[2] for line in report_lines(rebuilt)}["create_caption"]
    assert "folder subset" in note and "work/meta_cap.json" in note

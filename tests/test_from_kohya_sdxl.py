"""`sdft from-kohya` for kohya's sdxl_train.py: every option of its parser mapped or refused with
a reason, its own options (per-encoder learning rates, text-encoder output caching, block_lr,
no_half_vae, fused optimizer groups) converted, and kohya_ss GUI SDXL configs read as the GUI
launches sdxl_train.py. tests/test_kohya_corpus.py trains a converted sdxl_train.py command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.kohya.convert import from_command, from_config_file, known_to
from engine.kohya.options import FLAG, LIST, OPTIONS, SDXL_KNOWN, VALUE
from engine.kohya.scripts import SDXL_TRAIN, recognise

DATA = Path(__file__).parent / "data"
# kohya-ss/sd-scripts 48d368fa: sdxl_train.py's setup_parser(), dumped as fine_tune.py's was
SDXL = json.loads((DATA / "kohya_sdxl_train_options.json").read_text())["options"]
FINE_TUNE = json.loads((DATA / "kohya_fine_tune_options.json").read_text())["options"]
KIND = {"_StoreTrueAction": FLAG, "_StoreAction": VALUE}
BLOCKS = ",".join(["1e-6"] * 23)


def test_every_option_of_sdxl_trains_parser_is_mapped_or_refused_with_a_reason():
    names = {o["option"].lstrip("-") for o in SDXL}
    assert len(names) == 176
    # fine_tune.py's options less --learning_rate_te, plus sdxl_train.py's own
    assert names - {o["option"].lstrip("-") for o in FINE_TUNE} == {
        "reg_data_dir", "conditioning_data_dir", "masked_loss", "cache_text_encoder_outputs",
        "cache_text_encoder_outputs_to_disk", "disable_mmap_load_safetensors", "learning_rate_te1",
        "learning_rate_te2", "block_lr", "fused_optimizer_groups"}
    known = known_to(recognise(SDXL_TRAIN))
    assert known is SDXL_KNOWN and names <= set(known) and "learning_rate_te" not in known
    for option in SDXL:
        name = option["option"].lstrip("-")
        opt = known[name]
        assert opt.kind == (LIST if option["nargs"] == "*" else KIND.get(option["action"], VALUE)), name
        if opt.kind != FLAG and option["default"] not in (None, "None") and not opt.refused:
            assert opt.default == option["default"], name
        assert opt.to is not None or opt.refused or name == "config_file", name
        if opt.refused:
            assert len(opt.refused) > 20, name


def test_sdxl_trains_own_options_convert():
    conversion = from_command([
        "accelerate", "launch", "sdxl_train.py", "--pretrained_model_name_or_path=xl.safetensors",
        "--dataset_config=data.toml", "--learning_rate=4e-7", "--train_text_encoder", "--learning_rate_te1=1e-6",
        "--learning_rate_te2=0", f"--block_lr={BLOCKS}", "--no_half_vae", "--fused_optimizer_groups=8",
        "--full_bf16", "--mixed_precision=bf16", "--optimizer_type=adafactor"])
    doc = conversion.document
    assert conversion.script == SDXL_TRAIN and not conversion.refused
    assert doc["optimizer"]["learning_rate_te1"] == 1e-6 and doc["optimizer"]["learning_rate_te2"] == 0
    assert doc["optimizer"]["block_lr"] == [1e-6] * 23
    assert doc["memory"]["vae_dtype"] == "fp32" and doc["memory"]["fused_backward_pass"] is True
    assert doc["train"]["train_text_encoder"] is True


@pytest.mark.parametrize("flags, cache", [
    (["--cache_text_encoder_outputs"], "memory"),
    (["--cache_text_encoder_outputs", "--cache_text_encoder_outputs_to_disk"], "disk"),
    (["--cache_text_encoder_outputs_to_disk"], "disk"),    # kohya turns the cache on with it
])
def test_text_encoder_outputs_are_cached_where_kohya_caches_them(flags, cache):
    conversion = from_command(["sdxl_train.py", "--dataset_config=d.toml", *flags])
    assert conversion.document["cache"] == {"text_encoder_outputs": cache}


def test_what_sdxl_train_ignores_or_refuses_says_why():
    conversion = from_command(["sdxl_train.py", "--dataset_config=d.toml", "--v2", "--clip_skip=2",
                               "--learning_rate_te=1e-5", "--block_lr=1e-6,2e-6", "--disable_mmap_load_safetensors",
                               "--fused_optimizer_groups=0"])
    refused = {r.option: r.refused for r in conversion.refused}
    dropped = {r.option: r.dropped for r in conversion.dropped}
    assert "stops at --v2" in refused["v2"]
    assert refused["learning_rate_te"] == "not an option of kohya's sdxl_train.py"
    assert "must have 23 learning rates" in refused["block_lr"]
    assert "ignores clip skip" in dropped["clip_skip"] and "WSL" in dropped["disable_mmap_load_safetensors"]
    assert "fused_optimizer_groups" in dropped and "memory" not in conversion.document


def test_sdxl_options_given_to_fine_tune_name_the_script_they_belong_to():
    conversion = from_command(["fine_tune.py", "--learning_rate_te1=1e-6", "--cache_text_encoder_outputs"])
    refused = {r.option: r.refused for r in conversion.refused}
    assert refused["learning_rate_te1"].startswith("an option of kohya's sdxl_train.py, not of fine_tune.py")
    assert "cache_text_encoder_outputs" in refused
    assert "learning_rate_te" in OPTIONS   # fine_tune.py keeps its single text-encoder rate


def test_sdxl_train_reads_kohyas_folders_without_a_metadata_file(tmp_path, monkeypatch):
    """kohya's sdxl_train.py picks its DreamBooth method (N_name folders) without --in_json, its
    fine-tune method with one; unlike train_db.py it trains the text encoders only when asked."""
    (tmp_path / "img" / "10_sks dog").mkdir(parents=True)
    (tmp_path / "img" / "10_sks dog" / "a.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    folders = from_command(["sdxl_train.py", "--train_data_dir=img", "--reg_data_dir=nowhere"])
    subsets = folders.document["datasets"][0]["subsets"]
    assert subsets[0]["image_dir"].endswith("10_sks dog") and subsets[0]["num_repeats"] == 10
    assert "train" not in folders.document
    assert "not here to read" in {r.option: r.refused for r in folders.refused}["reg_data_dir"]
    metadata = from_command(["sdxl_train.py", "--train_data_dir=img", "--in_json=meta.json", "--reg_data_dir=reg"])
    assert metadata.document["datasets"][0]["subsets"][0] == {"image_dir": "img", "metadata_file": "meta.json"}
    assert "with a metadata file it has none" in {r.option: r.refused for r in metadata.refused}["reg_data_dir"]


def test_a_config_toml_with_sdxl_options_is_read_as_sdxl_train(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('pretrained_model_name_or_path = "xl.safetensors"\ndataset_config = "d.toml"\n'
                    'learning_rate_te2 = 0.0\ncache_text_encoder_outputs = true\n', encoding="utf-8")
    conversion = from_config_file(path)
    assert conversion.script == SDXL_TRAIN
    assert conversion.document["cache"] == {"text_encoder_outputs": "memory"}
    # without --train_text_encoder kohya ignores the encoders' rates: left out, as --check would flag it
    assert "optimizer" not in conversion.document
    assert "without a trained text encoder" in {r.option: r.dropped for r in conversion.dropped}["learning_rate_te2"]


def _gui(tmp_path, **fields) -> Path:
    """A kohya_ss GUI config with the SDXL box ticked, in the GUI's shape (every field written)."""
    base = {"pretrained_model_name_or_path": "xl.safetensors", "sdxl": True, "optimizer": "Adafactor",
            "learning_rate": 4e-7, "learning_rate_te": 1e-5, "learning_rate_te1": 1e-6, "learning_rate_te2": 0,
            "train_text_encoder": True, "sdxl_cache_text_encoder_outputs": False, "sdxl_no_half_vae": True,
            "block_lr": "", "fused_optimizer_groups": 0, "disable_mmap_load_safetensors": False,
            "dataset_config": "d.toml", "max_resolution": "1024,1024", "sd3_checkbox": False,
            "flux1_checkbox": False, "t5xxl": ""}
    path = tmp_path / "gui.json"
    path.write_text(json.dumps({**base, **fields}), encoding="utf-8")
    return path


def test_a_gui_sdxl_config_converts_as_the_gui_launches_sdxl_train(tmp_path):
    conversion = from_config_file(_gui(tmp_path))
    doc = conversion.document
    assert conversion.script == SDXL_TRAIN and not conversion.refused
    assert doc["optimizer"]["learning_rate_te1"] == 1e-6
    assert doc["optimizer"]["learning_rate_te2"] == 0      # the GUI passes 0: kohya keeps TE2 frozen
    assert "learning_rate_te" not in doc["optimizer"]
    assert doc["memory"]["vae_dtype"] == "fp32" and "cache" not in doc
    rows = {r.option: r for r in conversion.rows}
    assert "launches sdxl_train.py" in rows["sdxl"].dropped
    assert "SD 1.x/2.x scripts only" in rows["learning_rate_te"].dropped
    assert rows["sdxl_cache_text_encoder_outputs"].dropped.startswith("off")
    assert rows["t5xxl"].dropped     # another family's field: left out, as before
    cached = from_config_file(_gui(tmp_path, sdxl_cache_text_encoder_outputs=True, train_text_encoder=False))
    assert cached.document["cache"] == {"text_encoder_outputs": "memory"}


def test_a_gui_fine_tune_tab_sdxl_config_keeps_its_metadata_file(tmp_path):
    conversion = from_config_file(_gui(tmp_path, dataset_config="", train_dir="work", image_folder="imgs",
                                       caption_metadata_filename="meta_cap.json", use_latent_files="No"))
    subset = conversion.document["datasets"][0]["subsets"][0]
    assert conversion.script == SDXL_TRAIN
    assert subset["metadata_file"] == "work/meta_cap.json" and subset["image_dir"] == "imgs"

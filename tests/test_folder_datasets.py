"""Folder subsets (kohya's DreamBooth method): image_dir without metadata_file reads each image's
caption file or the subset's class_tokens, with num_repeats, keep_tokens and the other subset
keys; is_reg subsets repeat to the training images' count as in kohya's train_db.py; the
buckets are the metadata method's; the keys are checked; a run on them trains."""

from __future__ import annotations

import random

import pytest
from data_helpers import make_image, run_config

from engine.config.dataset import parse_dataset_tables
from engine.config.problems import ProblemList
from engine.data.metadata import build_metadata, write_metadata_json
from engine.data.pipeline import TrainingData
from engine.data.processing import process_caption
from engine.data.regularization import regularization_repeats

GENERAL = """
[general]
enable_bucket = true
resolution = 64
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
"""
SIZES = [(64, 64), (96, 64), (64, 96), (128, 48), (40, 100)]


def _data(tmp, text: str, seed: int = 3):
    cfg = run_config(tmp, GENERAL + text)
    cfg.cache.latents, cfg.train.seed = "none", seed
    said: list[str] = []
    return TrainingData.from_config(cfg, default_resolution=(64, 64), log=said.append), said


def _folder(root, count: int, *, seed: int = 0):
    return [make_image(root / f"im{i}.png", SIZES[i % len(SIZES)], seed=seed + i) for i in range(count)]


def test_captions_come_from_the_caption_files_first_line_else_the_class_tokens(tmp_path):
    images = _folder(tmp_path / "dog", 5)
    images[0].with_suffix(".txt").write_text("sks dog, sitting\nan old second line\n", encoding="utf-8")
    images[1].with_suffix(".txt").write_text("  \n", encoding="utf-8")             # empty: as if none
    images[2].with_suffix(".caption").write_text("not this extension", encoding="utf-8")
    make_image(tmp_path / "dog" / "im3_0_0_64_64.png", (64, 64), seed=9)          # a face crop of im3
    images[3].with_suffix(".txt").write_text("sks dog, face", encoding="utf-8")
    make_image(tmp_path / "dog" / "deeper" / "x.png", (64, 64))                   # not read: kohya's glob
    data, said = _data(tmp_path, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "dog"\n'
                                 'caption_extension = ".txt"\nclass_tokens = "sks dog"\n')
    captions = {it.path.name: it.caption for it in data.items}
    assert captions == {"im0.png": "sks dog, sitting", "im1.png": "sks dog", "im2.png": "sks dog",
                        "im3.png": "sks dog, face", "im3_0_0_64_64.png": "sks dog, face", "im4.png": "sks dog"}
    missing = next(line for line in said if "without a caption file" in line)
    assert "3 image(s)" in missing and 'class_tokens "sks dog"' in missing and "im1.png" in missing

    wildcard, _ = _data(tmp_path, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "dog"\nenable_wildcard = true\n'
                                  'caption_extension = ".txt"\n')
    assert wildcard.items[0].caption == "sks dog, sitting\nan old second line"
    assert wildcard.items[1].caption == "", "no class tokens: an empty caption, as kohya"


def test_the_runs_caption_extension_is_the_default_and_sub_folders_need_data_recursive(tmp_path):
    images = _folder(tmp_path / "dog", 2)
    images[0].with_suffix(".caption").write_text("a caption", encoding="utf-8")
    make_image(tmp_path / "dog" / "deeper" / "x.png", (64, 64))
    cfg = run_config(tmp_path, GENERAL + '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "dog"\n')
    cfg.cache.latents, cfg.train.seed = "none", 1
    data = TrainingData.from_config(cfg, default_resolution=(64, 64), log=lambda _m: None)
    assert [it.caption for it in data.items] == ["a caption", ""]
    cfg.data.recursive = True
    data = TrainingData.from_config(cfg, default_resolution=(64, 64), log=lambda _m: None)
    assert sorted(it.key for it in data.items) == ["deeper/x.png", "im0.png", "im1.png"]


def test_buckets_are_those_of_the_metadata_method_for_the_same_images(tmp_path):
    images = _folder(tmp_path / "imgs", 5)
    for image in images:
        image.with_suffix(".caption").write_text(f"photo of {image.stem}", encoding="utf-8")
    write_metadata_json(tmp_path / "meta.json", build_metadata(tmp_path / "imgs"))
    for no_upscale in ("false", "true"):
        table = f"[[datasets]]\nbucket_no_upscale = {no_upscale}\n[[datasets.subsets]]\nimage_dir = \"imgs\"\n"
        folder, _ = _data(tmp_path, table)
        metadata, _ = _data(tmp_path, table + 'metadata_file = "meta.json"\n')
        by_folder = {it.path: (it.bucket, it.resized, it.caption) for it in folder.items}
        assert by_folder == {it.path: (it.bucket, it.resized, it.caption) for it in metadata.items}
        assert len({bucket for bucket, _, _ in by_folder.values()}) > 1


def test_num_repeats_keep_tokens_and_the_other_subset_keys_apply(tmp_path):
    images = _folder(tmp_path / "dog", 3)
    for image in images:
        image.with_suffix(".txt").write_text("sks dog, red, blue, green, small", encoding="utf-8")
    data, _ = _data(tmp_path, '[[datasets]]\nbatch_size = 1\n[[datasets.subsets]]\nimage_dir = "dog"\n'
                              'caption_extension = ".txt"\nnum_repeats = 4\nkeep_tokens = 1\nshuffle_caption = true\n'
                              'caption_prefix = "photo"\n')
    assert data.num_items == 12 and data.batches_per_epoch() == 12
    planned = [i for ref in data.epoch_plan(1) for i in ref.items]
    assert sorted(planned) == sorted([it.index for it in data.items] * 4)
    sub = data.items[0].subset
    draws = {process_caption(data.items[0].caption, sub, random.Random(seed), epoch=1, step=0, max_train_steps=10)
             for seed in range(30)}
    assert len(draws) > 1 and all(d.startswith("photo sks dog,") for d in draws)   # keep_tokens = 1 holds it first


def test_regularization_images_repeat_to_the_training_count_as_in_train_db():
    # kohya's loop: a first pass with each image's own repeats, then one more each, in order
    assert regularization_repeats([1, 1, 1, 1], 6) == [2, 2, 1, 1]
    assert regularization_repeats([3, 3], 4) == [3, 3]   # the first pass takes whole repeats
    assert regularization_repeats([1, 1, 1, 1, 1], 3) == [1, 1, 1, 0, 0]
    assert regularization_repeats([2, 2], 0) == [0, 0]


def test_regularization_subsets_in_a_dataset(tmp_path):
    _folder(tmp_path / "10_dog", 3)
    _folder(tmp_path / "reg", 5, seed=20)
    text = ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "10_dog"\nnum_repeats = 2\nclass_tokens = "sks dog"\n'
            '[[datasets.subsets]]\nimage_dir = "reg"\nis_reg = true\nclass_tokens = "dog"\n')
    data, said = _data(tmp_path, text)
    reg = [it for it in data.items if it.subset.is_reg]
    assert [it.repeats for it in reg] == [2, 1, 1, 1, 1] and data.num_items == 6 + 6
    assert [it.index for it in data.items] == list(range(len(data.items)))
    assert any("regularization image(s) repeated to 6" in line for line in said)

    # more regularization images than needed: the rest are left out; never held out for validation
    data, said = _data(tmp_path, text.replace("num_repeats = 2", "num_repeats = 1").replace(
        "[[datasets]]\n", "[[datasets]]\nvalidation_split = 0.34\n"))
    trained = [it for it in data.items if not it.validation and not it.subset.is_reg]
    assert len(trained) == 2 and not any(it.validation for it in data.items if it.subset.is_reg)
    assert sorted(it.repeats for it in data.items if it.subset.is_reg) == [1, 1]   # 2 training images
    assert any("3 not used" in line for line in said)


def _problems(tmp_path, tables: dict) -> dict[str, str]:
    problems = ProblemList(file="ds.toml")
    parse_dataset_tables(tables, problems=problems, base_dir=tmp_path)
    return {p.key: f"{p.severity}: {p.message} | {p.hint}" for p in problems.items}


def test_the_folder_keys_are_checked(tmp_path):
    _folder(tmp_path / "dog", 1)
    (tmp_path / "meta.json").write_text("{}")
    folder = {"image_dir": "dog"}
    found = _problems(tmp_path, {"datasets": [{"subsets": [{**folder, "caption_extension": "txt"}]}]})
    assert "must start with a dot" in found["datasets[0].subsets[0].caption_extension"]
    found = _problems(tmp_path, {"datasets": [{"subsets": [{**folder, "is_reg": True, "is_val": True}]}]})
    assert found["datasets[0].subsets[0].is_reg"].startswith("error: is_val and is_reg")
    found = _problems(tmp_path, {"datasets": [{"subsets": [{**folder, "cache_info": True}]}]})
    assert found["datasets[0].subsets[0].cache_info"].startswith("error: cache_info is not in sdft")
    assert _problems(tmp_path, {"datasets": [{"subsets": [{**folder, "cache_info": False}]}]}) == {
        "datasets[0].subsets[0].cache_info": "note: cache_info at its default: nothing to do | "}
    metadata = {"metadata_file": "meta.json", "image_dir": "dog"}
    found = _problems(tmp_path, {"general": {"class_tokens": "x"},
                                 "datasets": [{"is_reg": True, "subsets": [{**metadata, "class_tokens": "y"}]}]})
    assert set(found) == {"general.class_tokens", "datasets[0].is_reg", "datasets[0].subsets[0].class_tokens"}
    assert all("folder subset's key" in why and "drop metadata_file" in why for why in found.values())
    found = _problems(tmp_path, {"datasets": [{"subsets": [{"num_repeats": 2}]}]})
    assert "needs image_dir" in found["datasets[0].subsets[0].image_dir"]
    found = _problems(tmp_path, {"datasets": [{"subsets": [{**folder, "prior_loss_weight": 1.0}]}]})
    assert "train_db.py command option" in found["datasets[0].subsets[0].prior_loss_weight"]


FOLDER_RUN = """\
[general]
caption_extension = ".txt"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "10_dog"
  num_repeats = 2
  class_tokens = "sks dog"
  keep_tokens = 1
  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
  class_tokens = "dog"
"""


def test_a_run_on_folder_subsets_passes_check_and_trains(tmp_path, tiny_sd1):
    from train_helpers import make_run

    from engine.preflight.checks import check_run_file
    from engine.runner import run_training

    for i, image in enumerate(_folder(tmp_path / "10_dog", 3)):
        image.with_suffix(".txt").write_text(f"sks dog, pose {i}", encoding="utf-8")
    _folder(tmp_path / "reg", 2, seed=30)
    run = make_run(tmp_path, tiny_sd1, steps=2)
    text = run.read_text()
    run.write_text(text[:text.index("[[datasets]]")].replace("[general]\n", "[data]\ncaption_extension = \".txt\"\n"
                                                             "[general]\n") + FOLDER_RUN.split("\n", 2)[2])
    _config, problems = check_run_file(run)
    assert not [p for p in problems if p.severity == "error"], [str(p) for p in problems]
    result = run_training(run)
    assert result.status == "completed", result.message


def test_sdft_prepare_checks_a_run_files_folder_subsets(tmp_path, capsys):
    import json

    from engine.data.cli import prepare_command

    for i, image in enumerate(_folder(tmp_path / "dog", 3)):
        if i:
            image.with_suffix(".txt").write_text("sks dog " + "word " * 120, encoding="utf-8")
    run = tmp_path / "run.toml"
    run.write_text('[data]\ncaption_extension = ".txt"\n[model]\nmax_token_length = 75\n' + GENERAL +
                   '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "dog"\nclass_tokens = "sks dog"\n')
    assert prepare_command([str(run), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("\n{") + 1:])   # after the dataset's name and the notes
    long = [issue for issue in report["issues"] if issue["kind"] == "too_long"]
    assert sorted(issue["path"].rsplit("/", 1)[1] for issue in long) == ["im1.png", "im2.png"], \
        "the captions are read as training reads them: the files, else the class tokens"


@pytest.mark.parametrize("extension", [".caption", ".txt"])
def test_sdft_prepare_writes_the_dataset_toml_of_kohyas_folders(tmp_path, capsys, extension):
    import tomllib

    from engine.data.cli import prepare_command

    for i, image in enumerate(_folder(tmp_path / "img" / "10_sks dog", 3)):
        if i:
            image.with_suffix(".txt").write_text("sks dog, red", encoding="utf-8")
    _folder(tmp_path / "img" / "notes", 1)
    _folder(tmp_path / "reg" / "1_dog", 2, seed=40)
    argv = [str(tmp_path / "img"), "--reg-dir", str(tmp_path / "reg"), "--resolution", "64",
            "--caption-extension", extension]
    assert prepare_command(argv) == 0
    out = capsys.readouterr().out
    written = tomllib.loads((tmp_path / "img" / "dataset.toml").read_text())
    assert written["general"] == {"caption_extension": extension}
    assert written["datasets"][0]["subsets"] == [
        {"image_dir": "10_sks dog", "num_repeats": 10, "class_tokens": "sks dog"},
        {"image_dir": str((tmp_path / "reg" / "1_dog").resolve()), "num_repeats": 1, "class_tokens": "dog",
         "is_reg": True}]
    assert "notes is not a subset" in out
    if extension == ".caption":
        assert '0 with a .caption file, 3 captioned "sks dog"' in out and "--caption-extension .txt" in out
    else:
        assert '2 with a .txt file, 1 captioned "sks dog"' in out
    again = prepare_command(argv[:-1] + [".caption" if extension == ".txt" else ".txt"])
    assert again == 2, "a dataset TOML that says something else is not replaced"


def test_the_wizard_opens_kohyas_folders_and_keeps_them(tmp_path):
    import tomllib

    from engine.project.project import Project

    images = _folder(tmp_path / "img" / "5_sks dog", 2)
    images[0].with_suffix(".caption").write_text("sks dog, running\nsecond line", encoding="utf-8")
    project = Project()
    project.open(tmp_path / "img")
    assert [project.caption_as_trained(r) for r in project.index.records] == ["sks dog, running", "sks dog"]
    assert project.draft.get("subset.num_repeats") == 5
    project.labels.set_text(1, "sks dog, lying")
    assert images[1].with_suffix(".caption").read_text(encoding="utf-8").strip() == "sks dog, lying"
    run = project.save(tmp_path / "run.toml")
    written = tomllib.loads(run.read_text())
    assert written["datasets"][0]["subsets"] == [{"image_dir": "img/5_sks dog", "num_repeats": 5,
                                                  "class_tokens": "sks dog"}]
    assert not list(tmp_path.glob("*metadata*.json")), "folder subsets train as they are: no metadata file"

    (tmp_path / "ds.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img/5_sks dog"\n'
                                      'caption_extension = ".txt"\n', encoding="utf-8")
    opened = Project()
    opened.open(tmp_path / "ds.toml")
    opened.labels.set_text(0, "sks dog, from the toml")
    assert images[0].with_suffix(".txt").read_text(encoding="utf-8").strip() == "sks dog, from the toml"

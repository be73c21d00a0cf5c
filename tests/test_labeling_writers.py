"""Write policies, metadata JSON, progress/stop and model-source errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labeling_helpers import make_wd14_folder, solid_image

from engine.labeling import LabelError, TagOptions, tag_images
from engine.labeling.sources import resolve_model

# 1girl .9, long_hair .5, miku [char] .8, ^_^ .6 pass 0.35; smile .3, red_eyes .34 do not; solo .36 passes
SCORES = [0.1, 0.7, 0.2, 0.05, 0.9, 0.5, 0.8, 0.3, 0.6, 0.36, 0.34, 0.99]
TAGS = "1girl, long_hair, ^_^, solo, hatsune_miku_(vocaloid), kaga_(kancolle)"


@pytest.fixture()
def wd14(tmp_path):
    return str(make_wd14_folder(tmp_path / "wd14", SCORES))


def test_skip_keeps_existing_files_and_does_not_run_them(tmp_path, wd14):
    images = [solid_image(tmp_path / "img" / f"{i}.png") for i in range(3)]
    images[0].with_suffix(".txt").write_text("mine\n")
    seen = []
    summary = tag_images(images, TagOptions(model=wd14), progress=seen.append)
    assert summary.skipped == 1 and summary.done == 2
    assert images[0].with_suffix(".txt").read_text() == "mine\n"
    assert images[1].with_suffix(".txt").read_text() == TAGS + "\n"
    assert seen[0].phase == "loading" and seen[-1].done == 2 and seen[-1].total == 2
    # everything labelled: the model is not even loaded (a broken model path would fail otherwise)
    again = tag_images(images, TagOptions(model=str(tmp_path / "nowhere")))
    assert again.skipped == 3 and again.done == 0


def test_overwrite_and_append_merge(tmp_path, wd14):
    image = solid_image(tmp_path / "a.png")
    sidecar = image.with_suffix(".txt")
    sidecar.write_text("solo, custom\n")
    tag_images([image], TagOptions(model=wd14, policy="append"))
    assert sidecar.read_text() == "solo, custom, 1girl, long_hair, ^_^, hatsune_miku_(vocaloid), kaga_(kancolle)\n"
    summary = tag_images([image], TagOptions(model=wd14, policy="overwrite"))
    assert sidecar.read_text() == TAGS + "\n" and summary.written == [str(sidecar)]
    unchanged = tag_images([image], TagOptions(model=wd14, policy="overwrite"))
    assert unchanged.written == []          # same text: the file is not rewritten


def test_append_to_a_non_utf8_tag_file_is_reported_not_garbled(tmp_path, wd14):
    image = solid_image(tmp_path / "a.png")
    sidecar = image.with_suffix(".txt")
    original = "caf\xe9, solo\n".encode("latin-1")
    sidecar.write_bytes(original)
    summary = tag_images([image], TagOptions(model=wd14, policy="append"))
    assert sidecar.read_bytes() == original
    assert summary.done == 0 and len(summary.failed) == 1 and "not UTF-8" in summary.failed[0][1]


def test_custom_extension_and_separator(tmp_path, wd14):
    image = solid_image(tmp_path / "a.png")
    tag_images([image], TagOptions(model=wd14, tags_extension=".tags", caption_separator=",", thresh=0.85))
    assert (tmp_path / "a.tags").read_text() == "1girl,kaga_(kancolle)\n"
    assert not (tmp_path / "a.txt").exists()


def test_metadata_json_updates_existing_keys_and_adds_new(tmp_path, wd14):
    folder = tmp_path / "img"
    a, b = solid_image(folder / "a.png", size=(24, 16)), solid_image(folder / "sub" / "b.png", size=(8, 8))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"a": {"caption": "a photo", "tags": "old", "extra": 1}}))
    summary = tag_images([a, b], TagOptions(model=wd14, thresh=0.85, metadata_file=meta, image_dir=folder,
                                            sidecars=False, policy="overwrite"))
    data = json.loads(meta.read_text())
    assert data["a"] == {"caption": "a photo", "tags": "1girl, kaga_(kancolle)", "extra": 1}   # stem key kept
    assert data["sub/b.png"] == {"tags": "1girl, kaga_(kancolle)", "image_size": [8, 8]}
    assert not a.with_suffix(".txt").exists()
    assert str(meta) in summary.written
    # skip policy: entries with tags are left alone, also in the metadata file
    meta.write_text(json.dumps({"a": {"tags": "keep"}}))
    summary = tag_images([a, b], TagOptions(model=wd14, metadata_file=meta, image_dir=folder, sidecars=False))
    assert summary.skipped == 1 and json.loads(meta.read_text())["a"] == {"tags": "keep"}


def test_bad_image_reported_and_skipped(tmp_path, wd14):
    good = solid_image(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    logs = []
    summary = tag_images([bad, good], TagOptions(model=wd14), log=logs.append)
    assert summary.done == 1 and [p for p, _ in summary.failed] == [str(bad)]
    assert not bad.with_suffix(".txt").exists() and good.with_suffix(".txt").exists()
    assert any("bad.jpg" in line for line in logs)
    assert any("CPU" in w and "per image" in w for w in summary.warnings)


def test_no_tag_above_threshold_writes_no_empty_file(tmp_path, wd14):
    image = solid_image(tmp_path / "a.png")
    summary = tag_images([image], TagOptions(model=wd14, thresh=0.999))
    assert summary.done == 1 and summary.texts[str(image)] == ""
    assert not image.with_suffix(".txt").exists()


def test_should_stop_after_first_batch(tmp_path, wd14):
    images = [solid_image(tmp_path / f"{i}.png") for i in range(4)]
    summary = tag_images(images, TagOptions(model=wd14, batch_size=1), should_stop=lambda: True)
    assert summary.stopped and summary.done == 0
    calls = []

    def stop_after_one():
        calls.append(1)
        return len(calls) > 1          # first check (before loading) passes, then stop

    summary = tag_images(images, TagOptions(model=wd14, batch_size=1), should_stop=stop_after_one)
    assert summary.stopped and summary.done == 1
    assert [p.with_suffix(".txt").exists() for p in images] == [True, False, False, False]


def test_model_folder_errors_name_the_problem(tmp_path, wd14):
    image = solid_image(tmp_path / "a.png")
    with pytest.raises(LabelError, match="folder not found"):
        tag_images([image], TagOptions(model=str(tmp_path / "missing" / "wd14")))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.onnx").write_bytes(b"")
    with pytest.raises(LabelError, match="missing selected_tags.csv"):
        tag_images([image], TagOptions(model=str(empty)))
    (empty / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,1\n")
    (empty / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(LabelError, match="not a usable ONNX"):
        tag_images([image], TagOptions(model=str(empty)))
    with pytest.raises(LabelError, match="not a folder"):
        tag_images([image], TagOptions(model=str(image)))
    assert not image.with_suffix(".txt").exists()


def test_hub_id_offline_error_says_how_to_pass_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LabelError) as info:
        resolve_model("SmilingWolf/wd-v1-4-convnext-tagger-v2", required=["model.onnx"], what="WD14 tagger")
    text = str(info.value)
    assert "SmilingWolf/wd-v1-4-convnext-tagger-v2" in text and "offline" in text and "--model FOLDER" in text


def test_overwrite_keeps_each_replaced_label_and_it_can_be_restored(tmp_path, wd14):
    from engine.data.label_backups import BACKUP_DIR_NAME, restore_backup

    folder = tmp_path / "img"
    images = [solid_image(folder / f"{i}.png") for i in range(2)] + [solid_image(folder / "sub" / "2.png")]
    images[0].with_suffix(".txt").write_text("my own tags, written by hand\n")
    images[2].with_suffix(".txt").write_text("sub folder tags\n")
    # skip and append replace nothing: no backup
    assert tag_images(images, TagOptions(model=wd14, image_dir=folder)).backups == []
    assert tag_images(images, TagOptions(model=wd14, image_dir=folder, policy="append")).backups == []
    assert not (folder / BACKUP_DIR_NAME).exists()
    images[0].with_suffix(".txt").write_text("my own tags, written by hand\n")
    summary = tag_images(images, TagOptions(model=wd14, image_dir=folder, policy="overwrite"))
    assert images[0].with_suffix(".txt").read_text() == TAGS + "\n"
    [backup] = summary.backups
    backup = Path(backup)
    assert backup.parent == folder / BACKUP_DIR_NAME
    assert (backup / "0.txt").read_text() == "my own tags, written by hand\n"
    assert (backup / "sub" / "2.txt").read_text().startswith("sub folder tags")
    assert not (backup / "1.txt").exists()          # 1.txt held what the model writes again: not replaced
    note = (backup / "RESTORE.txt").read_text()
    assert f'cp -a "{backup}/." "{folder.resolve()}/"' in note and "0.txt" in note
    # after the run (the wizard closed): put them back
    restored = restore_backup(backup)
    assert images[0].with_suffix(".txt").read_text() == "my own tags, written by hand\n"
    assert sorted(p.name for p in restored) == ["0.txt", "2.txt"]
    # a second overwrite gets its own folder; the first one stays
    second = tag_images(images, TagOptions(model=wd14, image_dir=folder, policy="overwrite")).backups
    assert second and Path(second[0]) != backup and (backup / "0.txt").exists()


def test_overwrite_in_a_metadata_file_keeps_the_file_as_it_was(tmp_path, wd14):
    from engine.data.label_backups import restore_backup

    folder = tmp_path / "img"
    a = solid_image(folder / "a.png")
    meta = folder / "meta.json"
    original = json.dumps({"a.png": {"caption": "a photo", "tags": "hand, made"}})
    meta.write_text(original)
    summary = tag_images([a], TagOptions(model=wd14, metadata_file=meta, image_dir=folder, sidecars=False,
                                         policy="overwrite"))
    assert json.loads(meta.read_text())["a.png"]["tags"] == TAGS
    [backup] = summary.backups
    assert (Path(backup) / "meta.json").read_text() == original
    restore_backup(backup)
    assert meta.read_text() == original


def test_sdft_tag_overwrite_says_where_the_replaced_labels_went(tmp_path, wd14, capsys):
    from engine.labeling.cli import tag_command

    folder = tmp_path / "my [set1] images"
    image = solid_image(folder / "0.png")
    image.with_suffix(".txt").write_text("hand written\n")
    assert tag_command([str(folder), "--model", wd14, "--overwrite"]) == 0
    out = "".join(capsys.readouterr().out.split("\n"))   # the console may wrap a long path
    [backup] = (folder / "sdft-label-backups").iterdir()
    assert (backup / "0.txt").read_text() == "hand written\n"
    assert f"kept the labels replaced in {backup} (its RESTORE.txt says how to put them back)" in out

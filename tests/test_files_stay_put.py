"""Files land where the run file says and nowhere else, and a dataset reads nothing that a
link leads to outside its folder."""

from __future__ import annotations

import json
import os

import pytest
from train_helpers import make_run

from engine.cli import main
from engine.data.metadata import build_metadata, read_metadata


@pytest.mark.parametrize("name", ["../../../x", "", ".", "..", "a/b", "a\\\\b"])
def test_an_output_name_that_is_not_a_plain_file_name_fails_the_check(tmp_path, tiny_sd1, capsys, name):
    config = make_run(tmp_path, tiny_sd1)
    config.write_text(config.read_text().replace('output_name = "t"', f'output_name = "{name}"'))
    assert main(["train", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert "train.output_name" in err and ("plain file name" in err or "must be a file name" in err)
    assert main(["train", str(config)]) == 2, "training refuses what --check refuses"
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_an_output_dir_that_is_a_file_fails_the_check_naming_it(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    (tmp_path / "runs").write_text("not a folder")
    assert main(["train", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert "train.output_dir" in err and f"{tmp_path / 'runs'} is a file" in err


def _outside_secret(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the private key")
    return secret


def test_prepare_does_not_read_a_sidecar_linked_outside_the_folder_and_names_it(tmp_path, capsys):
    from PIL import Image

    from engine.data.cli import prepare_command

    images = tmp_path / "data"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    Image.new("RGB", (64, 64)).save(images / "b.png")
    (images / "b.caption").write_text("a fine caption")
    os.symlink(_outside_secret(tmp_path), images / "a.caption")
    os.symlink(tmp_path / "elsewhere.png", images / "c.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "elsewhere.png")
    assert prepare_command([str(images)]) == 0
    meta = json.loads((images / "metadata.json").read_text())
    assert "the private key" not in json.dumps(meta)
    assert sorted(meta) == ["a.png", "b.png"] and meta["b.png"]["caption"] == "a fine caption"
    out = capsys.readouterr().out
    assert "a.caption" in out and "c.png" in out and "outside" in out


def test_build_metadata_lists_links_it_did_not_follow(tmp_path):
    from PIL import Image

    images = tmp_path / "data"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    os.symlink(_outside_secret(tmp_path), images / "a.txt")
    not_read = []
    meta = build_metadata(images, not_read=not_read)
    assert "tags" not in meta["a.png"] and [path for path, _why in not_read] == [images / "a.txt"]
    assert "outside" in not_read[0][1]


def test_metadata_keys_outside_the_image_folder_are_counted_and_named(tmp_path, tiny_sd1, capsys):
    from PIL import Image

    config = make_run(tmp_path, tiny_sd1)
    Image.new("RGB", (64, 64)).save(tmp_path / "stray.png")
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["../stray.png"] = {"caption": "from outside"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    read = read_metadata(tmp_path / "meta.json", tmp_path / "images")
    assert any("1 key(s) name images outside" in w and "'../stray.png'" in w for w in read.warnings)
    assert main(["train", str(config), "--check"]) == 0, "they still train (kohya's --full_path keys)"
    out = capsys.readouterr()
    assert "'../stray.png'" in out.out + out.err

    from engine.data.cli import prepare_command

    prepare_command([str(config)])
    assert "'../stray.png'" in capsys.readouterr().out, "the health check names them too"

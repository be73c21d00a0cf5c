"""``sdft caption`` / ``sdft tag``: folders, run TOMLs, summaries and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from labeling_helpers import make_blip_folder, make_wd14_folder, solid_image

from engine.labeling.cli import caption_command, tag_command

SCORES = [0.1, 0.7, 0.2, 0.05, 0.9, 0.5, 0.8, 0.3, 0.6, 0.36, 0.34, 0.99]


def test_tag_folder_summary_and_exit_codes(tmp_path, capsys):
    model = make_wd14_folder(tmp_path / "wd14", SCORES)
    folder = tmp_path / "img"
    for i in range(3):
        solid_image(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"broken")
    code = tag_command([str(folder), "--model", str(model), "--batch-size", "2", "--thresh", "0.85",
                        "--use-rating-tags"])
    out = capsys.readouterr().out
    assert code == 1                                  # one image failed
    assert "3 done, 0 skipped" in out and "1 failed" in out and "bad.png" in out
    assert "tags per image: 3.0" in out
    assert (folder / "0.txt").read_text() == "sensitive, 1girl, kaga_(kancolle)\n"
    (folder / "bad.png").unlink()
    code = tag_command([str(folder), "--model", str(model), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["skipped"] == 3 and summary["done"] == 0
    code = tag_command([str(folder), "--model", str(model), "--overwrite", "--json", "--remove-underscore",
                        "--character-tag-expand", "--max-tags", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["done"] == 3
    assert (folder / "1.txt").read_text() == "1girl, kaga, kancolle\n"
    assert summary["tag_frequency"]["1girl"] == 3


def test_tag_run_toml_uses_subset_folders_and_data_extension(tmp_path, capsys):
    model = make_wd14_folder(tmp_path / "wd14", SCORES)
    for name in ("a", "b"):
        solid_image(tmp_path / name / "x.png")
    # metadata files do not exist yet (the usual state before labelling): the TOML does not
    # validate, and the image_dir folders it names are labelled anyway
    (tmp_path / "run.toml").write_text(
        '[data]\ntags_extension = ".tags"\n\n'
        '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nmetadata_file = "a.json"\n'
        '[[datasets.subsets]]\nimage_dir = "b"\nmetadata_file = "b.json"\n')
    code = tag_command([str(tmp_path / "run.toml"), "--model", str(model), "--thresh", "0.85"])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert (tmp_path / "a" / "x.tags").read_text() == "1girl, kaga_(kancolle)\n"
    assert (tmp_path / "b" / "x.tags").read_text() == "1girl, kaga_(kancolle)\n"
    assert "2 done" in captured.out


def test_usage_errors(tmp_path, capsys):
    assert tag_command([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    folder = tmp_path / "img"
    solid_image(folder / "a.png")
    assert tag_command([str(folder), "--model", str(tmp_path / "missing-model")]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert caption_command([str(folder), "--batch-size", "0"]) == 2
    assert not (folder / "a.txt").exists()


def test_offline_default_model_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = tmp_path / "img"
    solid_image(folder / "a.png")
    assert tag_command([str(folder)]) == 2
    err = capsys.readouterr().err
    assert "SmilingWolf/wd-v1-4-convnext-tagger-v2" in err and "--model" in err


@pytest.mark.slow
def test_caption_cli_subprocess(tmp_path):
    model = make_blip_folder(tmp_path / "blip")
    folder = tmp_path / "img"
    for i in range(2):
        solid_image(folder / f"{i}.png", color=(10 * i, 50, 90))
    (folder / "1.caption").write_text("keep me\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main())",
                           "caption", str(folder), "--model", str(model), "--max-length", "10", "--beam-search",
                           "--prefix", "photo: "],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "1 done, 1 skipped" in done.stdout
    assert "images/s on cpu" in done.stdout
    assert "CPU" in done.stdout + done.stderr and "per image" in done.stdout + done.stderr
    assert (folder / "0.caption").read_text().startswith("photo: ")
    assert (folder / "1.caption").read_text() == "keep me\n"
    assert "Loading weights" not in done.stderr       # library progress bars are silenced


def test_tag_a_valid_run_toml_updates_its_metadata(tmp_path, capsys):
    model = make_wd14_folder(tmp_path / "wd14", SCORES)
    solid_image(tmp_path / "imgs" / "x.png")
    (tmp_path / "meta.json").write_text(json.dumps({"x.png": {"caption": "a red picture"}}))
    (tmp_path / "run.toml").write_text(
        '[model]\npretrained_model_name_or_path = "model"\n\n'
        '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "imgs"\nmetadata_file = "meta.json"\n')
    from engine.config.run_toml import load_run_file

    load_run_file(tmp_path / "run.toml")                    # the file is valid before labelling
    code = tag_command([str(tmp_path / "run.toml"), "--model", str(model), "--thresh", "0.85",
                        "--update-metadata"])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert (tmp_path / "imgs" / "x.txt").read_text() == "1girl, kaga_(kancolle)\n"
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["x.png"]["caption"] == "a red picture"       # kept
    assert meta["x.png"]["tags"] == "1girl, kaga_(kancolle)"

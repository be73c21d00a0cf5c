"""Bad config input gets a message, not a traceback: duplicates, encodings, kohya's spellings,
resolutions off the 64 grid; run TOMLs and dataset TOMLs alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config.dataset import load_dataset_file
from engine.config.problems import ConfigError, ProblemList
from engine.config.run_toml import load_run_file

DATASET = """\
[general]
resolution = {resolution}
enable_bucket = {bucket}

[[datasets]]
  [[datasets.subsets]]
  metadata_file = "meta.json"
"""


def _run(folder: Path, body: str, name: str = "run.toml") -> Path:
    (folder / "meta.json").write_text(json.dumps({"a.png": {"caption": "a"}}))
    path = folder / name
    path.write_text(body)
    return path


def _problems(path: Path):
    with pytest.raises(ConfigError) as info:
        load_run_file(path)
    return info.value.problems


@pytest.mark.parametrize("body, key, lines", [
    ("[train]\nseed = 1\n[model]\nclip_skip = 2\n[train]\nseed = 2\n", "train", "1 and 5"),
    ("[train]\nseed = 1\nseed = 2\n", "train.seed", "2 and 3"),
    ('[[datasets]]\n  [[datasets.subsets]]\n  metadata_file = "meta.json"\n  num_repeats = 1\n  num_repeats = 2\n',
     "datasets[0].subsets[0].num_repeats", "4 and 5"),
])
def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path, body, key, lines):
    [problem] = _problems(_run(tmp_path, body))
    assert key in problem.key and f"lines {lines}" in problem.message and problem.hint


def test_a_duplicate_inside_an_inline_table_is_named(tmp_path):
    [problem] = _problems(_run(tmp_path, "[optimizer]\nargs = { eps = 1e-8, eps = 1e-6 }\n"))
    assert problem.key == "eps" and "twice on line 2" in problem.message


def test_utf16_gets_an_encoding_hint_and_a_bom_a_note(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(DATASET.format(resolution=64, bucket="false"), encoding="utf-16")
    [problem] = _problems(path)
    assert "UTF-16" in problem.message and "UTF-8" in problem.hint
    path.write_bytes(b"\xef\xbb\xbf" + DATASET.format(resolution=64, bucket="false").encode())
    (tmp_path / "meta.json").write_text("{}")
    _config, _doc, warnings = load_run_file(path)
    assert any("byte-order mark" in w.message and w.severity == "note" for w in warnings)
    path.write_bytes(b"[train]\noutput_name = \"caf\xe9\"\n")
    [problem] = _problems(path)
    assert "not UTF-8" in problem.message and problem.line == 2


def test_dataset_files_get_the_same_messages(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "ds.toml").write_text("[general]\nresolution = 64\nresolution = 96\n")
    problems = ProblemList(file="run.toml")
    load_dataset_file(tmp_path / "ds.toml", problems)
    assert any("lines 2 and 3" in p.message and p.file.endswith("ds.toml") for p in problems.items)
    (tmp_path / "ds.toml").write_text(DATASET.format(resolution=64, bucket="false"), encoding="utf-16")
    problems = ProblemList(file="run.toml")
    load_dataset_file(tmp_path / "ds.toml", problems)
    assert any("UTF-16" in p.message for p in problems.items)


def test_kohyas_old_spelling_is_read_with_a_note(tmp_path):
    path = _run(tmp_path, DATASET.format(resolution=64, bucket="false") + '\n[data]\ncaption_extention = ".txt"\n')
    # [data] after [[datasets]] would nest under it: put it first
    path.write_text('[data]\ncaption_extention = ".txt"\n\n' + DATASET.format(resolution=64, bucket="false"))
    config, _doc, warnings = load_run_file(path)
    assert config.data.caption_extension == ".txt"
    assert any(w.key == "data.caption_extention" and "data.caption_extension" in w.message and w.line == 2
               for w in warnings)
    path.write_text('[data]\ncaption_extention = ".txt"\ncaption_extension = ".cap"\n\n'
                    + DATASET.format(resolution=64, bucket="false"))
    assert any("both" in p.message for p in _problems(path))


@pytest.mark.parametrize("bucket, says", [
    ("true", "only sets the bucket area (100x100 = 10,000 pixels)"),
    ("false", "resized and centre-cropped to exactly 100x100"),
])
def test_a_resolution_off_the_64_grid_says_what_it_does(tmp_path, bucket, says):
    path = _run(tmp_path, DATASET.format(resolution=100, bucket=bucket).replace(
        "enable_bucket", "min_bucket_reso = 64\nenable_bucket"))
    config, _doc, warnings = load_run_file(path)
    assert config.datasets.datasets[0].resolution == (100, 100)     # used as given, as kohya does
    [note] = [w for w in warnings if w.key == "general.resolution"]
    assert says in note.message and note.line == 2
    path.write_text(DATASET.format(resolution=128, bucket=bucket).replace("enable_bucket", "min_bucket_reso = 64\nenable_bucket"))
    _config, _doc, warnings = load_run_file(path)
    assert not [w for w in warnings if w.key == "general.resolution"]

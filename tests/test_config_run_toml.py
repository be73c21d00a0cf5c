"""Run TOML: schema errors (all at once, dotted key, line, hint), round trips, --check."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.config.problems import ConfigError
from engine.config.run_toml import (
    dump_document,
    load_document,
    load_run_file,
    parse_run_text,
    save_document,
    set_value,
)


@pytest.fixture()
def dataset_dir(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate([(64, 64), (96, 64)]):
        Image.new("RGB", size, (i * 50, 0, 0)).save(images / f"img{i}.png")
    (tmp_path / "meta.json").write_text('{"img0.png": {"caption": "a"}, "img1.png": {"caption": "b"}}')
    return tmp_path


GOOD = """\
# my run
config_version = 1

[model]
pretrained_model_name_or_path = "model"  # keep this comment
clip_skip = 2

[train]
max_train_steps = 10

[[datasets]]
resolution = 64
  [[datasets.subsets]]
  image_dir = "images"
  metadata_file = "meta.json"
"""


def write(folder: Path, text: str, name: str = "run.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_valid_file_loads_with_typed_values(dataset_dir):
    config, _doc, warnings = load_run_file(write(dataset_dir, GOOD))
    assert config.model.clip_skip == 2
    assert config.train.max_train_steps == 10
    assert config.optimizer.learning_rate == 2e-6          # the schema default
    assert config.run_dir() == dataset_dir / "runs" / "sdft-run"
    assert len(config.datasets.datasets) == 1
    assert not [w for w in warnings if w.severity == "error"]


def test_every_problem_is_reported_at_once_with_key_line_and_hint(dataset_dir):
    bad = GOOD.replace("clip_skip = 2", 'clip_skip = "two"\nclip_skp = 2').replace(
        "max_train_steps = 10", "max_train_steps = 0\nlearning_rate = 1e-5"
    ) + "\n[memory]\nmixed_precision = \"fp8\"\n"
    path = write(dataset_dir, bad)
    with pytest.raises(ConfigError) as info:
        load_run_file(path)
    problems = {p.key: p for p in info.value.problems}
    assert problems["model.clip_skip"].message.startswith("must be an integer")
    assert problems["model.clip_skp"].hint == 'did you mean "clip_skip"?'
    assert problems["model.clip_skp"].line == 7
    assert problems["train.max_train_steps"].message.startswith("must be at least 1")
    assert "train.learning_rate" in problems                     # belongs in [optimizer]
    assert "fp8" in problems["memory.mixed_precision"].message
    assert problems["memory.mixed_precision"].file == str(path)
    assert all(p.file == str(path) for p in info.value.problems)


def test_rejected_kohya_options_say_why(dataset_dir):
    text = "deepspeed = true\n" + GOOD.replace("[train]\n", "[train]\nv_pred_like_loss = 0.1\n")
    with pytest.raises(ConfigError) as info:
        parse_run_text(text, base_dir=dataset_dir)
    messages = {p.key: p for p in info.value.problems}
    assert "never applies" in messages["train.v_pred_like_loss"].hint
    assert "accelerate" in messages["deepspeed"].hint


def test_cross_field_rules(dataset_dir):
    text = GOOD + "\n[memory]\nfull_bf16 = true\n"
    with pytest.raises(ConfigError) as info:
        parse_run_text(text, base_dir=dataset_dir)
    assert any(p.key == "memory.full_bf16" and "bf16" in p.hint for p in info.value.problems)


def test_invalid_toml_syntax_names_the_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_run_text("[model\nx = 1\n", file="broken.toml")
    problem = info.value.problems[0]
    assert "not valid TOML" in problem.message and problem.file == "broken.toml"


def test_missing_dataset_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_run_text('[model]\npretrained_model_name_or_path = "x"\n', base_dir=tmp_path)
    assert any(p.key == "datasets" for p in info.value.problems)


def test_noop_save_is_byte_identical_and_edits_keep_comments(dataset_dir):
    path = write(dataset_dir, GOOD)
    doc = load_document(path)
    set_value(doc, "model.clip_skip", 2)                  # unchanged value
    save_document(doc, path)
    assert path.read_text() == GOOD
    set_value(doc, "train.max_train_steps", 25)
    set_value(doc, "optimizer.learning_rate", 1e-5)       # a new table
    save_document(doc, path)
    text = path.read_text()
    assert "# keep this comment" in text and "# my run" in text
    config, _doc, _w = load_run_file(path)
    assert config.train.max_train_steps == 25 and config.optimizer.learning_rate == 1e-5
    set_value(doc, "optimizer.learning_rate", None)        # None deletes
    assert "learning_rate" not in dump_document(doc)


def _sdft(capsys, *args) -> tuple[int, str, str]:
    """`sdft ARGS` in this process (the exit code and the messages are tested, not the process)."""
    from sdft_tui.cli import main

    code = main(list(args))
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_check_exit_codes(dataset_dir, tiny_sd1, capsys):
    text = GOOD.replace('"model"', f'"{tiny_sd1}"')
    good = write(dataset_dir, text)
    bad = write(dataset_dir, text.replace("clip_skip = 2", "clip_skip = 0"), "bad.toml")
    code, out, err = _sdft(capsys, "train", str(good), "--check")
    assert code == 0, err
    assert "is valid" in out
    code, _out, err = _sdft(capsys, "train", str(bad), "--check")
    assert code == 2
    assert "model.clip_skip" in err and "bad.toml:6" in err
    code, _out, _err = _sdft(capsys, "train", str(dataset_dir / "nope.toml"))
    assert code == 2


def test_missing_sample_prompts_file_is_reported_before_training(dataset_dir):
    text = GOOD + '\n[sample]\nprompts = "prompts.txt"\n'
    with pytest.raises(ConfigError) as info:
        parse_run_text(text, base_dir=dataset_dir)
    assert any(p.key == "sample.prompts" and "not found" in p.message for p in info.value.problems)
    (dataset_dir / "prompts.txt").write_text("a cat\n")
    config, _doc, _w = parse_run_text(text, base_dir=dataset_dir)
    assert config.sample.prompts == "prompts.txt"

"""Every file sdft reads from a run is a regular file of a sane size: devices and FIFOs are
refused by name, huge files with a clear message, huge captions cut before tokenizing."""

from __future__ import annotations

import json
import os
import threading

import pytest
from train_helpers import make_run

from engine.cli import main


def _check(config, capsys) -> tuple[int, str]:
    code = main(["train", str(config), "--check"])
    out = capsys.readouterr()
    return code, out.out + out.err


def _fifo(path):
    os.mkfifo(path)
    return path


def _with_deadline(function, seconds: float = 60):
    """Run ``function``; a read that blocks on a FIFO would never come back."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked reading a FIFO"
    return result["value"]


def test_a_device_as_dataset_config_is_refused_by_name(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    text = config.read_text()
    head = text[:text.index("[general]")]
    config.write_text('dataset_config = "/dev/zero"\n' + head)
    code, out = _with_deadline(lambda: _check(config, capsys))
    assert code == 2
    assert "/dev/zero" in out and "a device, not a regular file" in out


@pytest.mark.parametrize("what", ["run", "metadata", "prompts"])
def test_a_fifo_is_refused_instead_of_blocking(tmp_path, tiny_sd1, capsys, what):
    config = make_run(tmp_path, tiny_sd1)
    if what == "run":
        config = _fifo(tmp_path / "fifo.toml")
    elif what == "metadata":
        (tmp_path / "meta.json").unlink()
        _fifo(tmp_path / "meta.json")
    else:
        _fifo(tmp_path / "prompts.txt")
        config.write_text(config.read_text().replace("[general]", '[sample]\nevery_n_steps = 2\n'
                                                     'prompts = "prompts.txt"\n\n[general]'))
    code, out = _with_deadline(lambda: _check(config, capsys))
    assert code == 2 and "FIFO" in out, out


def test_an_oversized_run_file_is_refused_with_its_size(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    config.write_text(config.read_text() + "#" * (5 << 20) + "\n")
    code, out = _check(config, capsys)
    assert code == 2 and "over the 4 MiB a run file may have" in out and str(config) in out


def test_a_caption_sidecar_that_is_a_fifo_is_named_and_not_read(tmp_path, capsys):
    from PIL import Image

    from engine.data.cli import prepare_command

    images = tmp_path / "data"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    _fifo(images / "a.caption")
    assert _with_deadline(lambda: prepare_command([str(images)])) == 0
    assert "caption" not in json.loads((images / "metadata.json").read_text())["a.png"]
    assert "a.caption" in capsys.readouterr().out
    assert _with_deadline(lambda: prepare_command([str(images), "--check", "--no-write"])) in (0, 1)
    assert "a.caption" in capsys.readouterr().out, "the health check names it too"


def test_a_huge_caption_is_cut_before_tokenizing_and_named(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["im0.png"]["caption"] = "word " * 2_000_000        # 10 MB
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    from engine.config.run_toml import load_run_config
    from engine.data.pipeline import TrainingData

    said = []
    data = TrainingData.from_config(load_run_config(config), default_resolution=(64, 64), log=said.append)
    item = next(it for it in data.items if it.path.name == "im0.png")
    assert len(item.caption) == 150 * 64, "cut at the characters max_token_length = 150 tokens can take"
    assert any("1 caption(s) over 9,600 characters are cut" in s and "im0.png" in s for s in said), said

    from engine.data.cli import prepare_command

    prepare_command([str(config)])
    out = capsys.readouterr().out
    assert "im0.png" in out and "10,000,000 characters" in out


def test_check_warns_when_sampling_would_outweigh_training(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1, steps=4)
    (tmp_path / "prompts.txt").write_text("a cat --w 64 --h 64 --s 10\n" * 200)
    config.write_text(config.read_text().replace("[general]", '[sample]\nevery_n_steps = 1\n'
                                                 'prompts = "prompts.txt"\n\n[general]'))
    code, out = _check(config, capsys)
    assert code == 0
    assert "sampling 200 prompt(s) at 4 point(s) is about" in out and "the work of the 4 training steps" in out

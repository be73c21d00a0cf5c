"""`sdft convert` keeps an existing output unless told; `sdft demo` says when it reuses a folder."""

from __future__ import annotations

import tomlkit

from engine.cli import main


def test_convert_refuses_to_replace_an_existing_output_without_force(tmp_path, tiny_sd1, capsys):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"someone's model")
    assert main(["convert", str(tiny_sd1), str(out)]) == 2
    assert "exists; pass --force to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"someone's model"
    assert main(["convert", str(tiny_sd1), str(out), "--force"]) == 0
    assert out.stat().st_size > 1000


def test_demo_reuses_an_existing_folder_says_so_and_honours_steps(tmp_path, monkeypatch, capsys):
    from engine import cli
    from engine.demo import prepare_demo

    toml = prepare_demo(tmp_path / "demo", steps=3)
    toml.write_text(toml.read_text().replace("learning_rate = 1e-4", "learning_rate = 2e-4  # mine"))
    trained = []
    monkeypatch.setattr(cli, "train_headless", lambda path, **kw: trained.append(path) or 0)
    assert main(["demo", "--headless", "--dir", str(tmp_path / "demo"), "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "reusing the demo in" in out and "max_train_steps set to 5" in out and "--force" in out
    document = tomlkit.parse(toml.read_text())
    assert document["train"]["max_train_steps"] == 5
    assert "learning_rate = 2e-4  # mine" in toml.read_text(), "the user's edit and comment are kept"
    assert trained == [toml]
    assert main(["demo", "--headless", "--dir", str(tmp_path / "demo")]) == 0   # no --steps: the file's own
    assert tomlkit.parse(toml.read_text())["train"]["max_train_steps"] == 5
    assert main(["demo", "--headless", "--dir", str(tmp_path / "fresh"), "--steps", "6"]) == 0
    assert "preparing the demo" in capsys.readouterr().out
    assert tomlkit.parse((tmp_path / "fresh" / "demo.toml").read_text())["train"]["max_train_steps"] == 6

"""Resuming after a data edit works: caption, tag and image edits between a stop and a resume
continue the run with a note naming what changed; a changed base model still needs
--allow-changed; `--check --resume` says exactly what training will say."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from PIL import Image
from train_helpers import make_run

from engine.cli import main
from engine.config.problems import ConfigError
from engine.events import ListSink
from engine.runner import run_training

SAVE = "every_n_steps = 2\nstate = true\n"


def _messages(sink) -> list[str]:
    return [e.text for e in sink.events if e.kind == "message"]


@pytest.fixture(scope="module")
def trained_2_steps(tmp_path_factory, tiny_sd1):
    """A run folder that trained 2 steps and kept the state of step 2, trained once per module."""
    folder = tmp_path_factory.mktemp("stopped-at-2")
    config = make_run(folder, tiny_sd1, steps=2, save_extra=SAVE + "state_on_train_end = true\n")
    assert run_training(config).status == "completed"
    return folder


@pytest.fixture
def stopped_at_2(trained_2_steps, tmp_path):
    """A run of 4 steps that trained 2 and kept the state of step 2: the module's run copied into
    tmp_path (its paths are relative to the run file; copy2 keeps the files' times, which the
    state's record of the images compares), for the test to edit."""
    shutil.copytree(trained_2_steps, tmp_path, dirs_exist_ok=True)
    config = tmp_path / "run.toml"
    config.write_text(config.read_text().replace("max_train_steps = 2", "max_train_steps = 4"))
    return config


def test_a_caption_edit_resumes_with_a_note_naming_the_image(stopped_at_2, tmp_path, capsys):
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["im3.png"]["caption"] = "an edited caption"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert main(["train", str(stopped_at_2), "--resume", "latest", "--check"]) == 0
    checked = capsys.readouterr()
    sink = ListSink()
    result = run_training(stopped_at_2, resume="latest", sink=sink)
    assert result.status == "completed", result.message
    note = next(m for m in _messages(sink) if "the dataset changed" in m)
    assert "1 caption or tags edited: im3.png" in note and "no longer bit-identical" in note
    assert "from step 2" in note
    assert note in checked.out + checked.err, "--check --resume says exactly what training says"


def test_an_image_edit_resumes_and_encodes_that_image_again(stopped_at_2, tmp_path):
    image = tmp_path / "images" / "im1.png"
    size = Image.open(image).size
    Image.new("RGB", size, (10, 200, 10)).save(image)
    sink = ListSink()
    result = run_training(stopped_at_2, resume="latest", sink=sink)
    assert result.status == "completed", result.message
    assert any("1 image file changed (encoded again): im1.png" in m for m in _messages(sink)), _messages(sink)
    assert any("latent cache: 5 reused" in m and "1 to encode" in m for m in _messages(sink)), _messages(sink)


def test_a_changed_base_model_still_needs_allow_changed(stopped_at_2, tmp_path, tiny_sd1, capsys):
    other = shutil.copytree(tiny_sd1, tmp_path / "other-model")
    stopped_at_2.write_text(stopped_at_2.read_text().replace(str(tiny_sd1), str(other)))
    assert main(["train", str(stopped_at_2), "--resume", "latest", "--check"]) == 2
    assert "the base model" in capsys.readouterr().err
    with pytest.raises(ConfigError) as refused:   # training refuses what --check refuses, before it starts
        run_training(stopped_at_2, resume="latest")
    assert "the base model" in str(refused.value) and "--allow-changed" in str(refused.value)
    assert main(["train", str(stopped_at_2), "--resume", "latest", "--check", "--allow-changed"]) == 0
    assert run_training(stopped_at_2, resume="latest", allow_changed=True).status == "completed"


def test_a_failed_tui_run_prints_its_reason_after_the_dashboard_closes(tmp_path, monkeypatch, capsys):
    from dashboard_helpers import FakeEngine, wait_until

    from sdft_tui.dashboard import DashboardApp, run_dashboard

    def finished(screen) -> bool:
        return screen.figures.finished is not None and screen.handle.done.is_set()

    engine = FakeEngine(tmp_path / "run", total_steps=10, ending="fail", fail_at=3)

    def headless_run(self, *args, **kwargs):
        async def go():
            async with self.run_test(size=(80, 24)) as pilot:
                await wait_until(pilot, lambda: self.dashboard is not None and finished(self.dashboard))
                await pilot.press("q")
                await pilot.pause()
        asyncio.run(go())
        return self.return_code

    monkeypatch.setattr(DashboardApp, "run", headless_run)
    assert run_dashboard(tmp_path / "run.toml", engine=engine) == 3
    assert "training failed: caption file unreadable: data/cat.txt" in capsys.readouterr().err

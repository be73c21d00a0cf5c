"""Pilot walks the whole wizard on a generated dataset; the saved TOML loads and equals the choices."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from engine.config.run_toml import load_run_file
from engine.hardware import GpuInfo, HardwareInfo
from sdft_tui.app import SdftApp
from tests.wizard_helpers import make_dataset, screen_text, settle

GPU12 = HardwareInfo(gpus=[GpuInfo(0, "NVIDIA GeForce RTX 3060", 12 * 2**30)], source="test")


async def _type(pilot, widget, text: str) -> None:
    widget.focus()
    widget.value = ""
    await pilot.pause()
    await pilot.press(*list(text))
    await pilot.pause()


async def _paste(pilot, widget, text: str) -> None:
    """A long path pasted, as users enter one: one change (each keystroke on Review renders and
    checks the whole file again, in a thread). Short values are typed key by key."""
    from textual.events import Paste

    widget.focus()
    widget.value = ""
    await pilot.pause()
    widget.post_message(Paste(text))
    await pilot.pause()


@pytest.mark.slow
def test_walk_the_whole_wizard(tmp_path):
    folder = make_dataset(tmp_path)
    run_path = tmp_path / "runs" / "my-run.toml"

    async def walk():
        app = SdftApp(hardware=GPU12, start_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            # 1. dataset: typed path + enter scans in a worker
            await _paste(pilot, app.screen.query_one("#path"), str(folder))
            await pilot.press("enter")
            await settle(app, pilot)
            assert "8 images" in screen_text(app)
            health = app.screen.query_one("#health")
            health.scroll_end(animate=False)   # the health list scrolls under the summary at 80x24
            await pilot.pause()
            assert "no caption or tags" in screen_text(app)
            assert app.state.health_report is not None

            # 2. captions: edit the selected caption, save (ctrl+s), undo (ctrl+u)
            await pilot.press("ctrl+n")
            await settle(app, pilot)
            assert app.current_step() == "captions"
            editor = app.screen.query_one("#editor")
            editor.focus()
            editor.load_text("a brand new caption")
            await pilot.press("ctrl+s")
            await settle(app, pilot)
            assert (folder / "img00.caption").read_text(encoding="utf-8").strip() == "a brand new caption"
            await pilot.press("ctrl+u")
            await settle(app, pilot)
            assert (folder / "img00.caption").read_text(encoding="utf-8").strip() == "a photo of thing 0, red, blue"
            # filter by problem kind
            await _type(pilot, app.screen.query_one("#filter"), "problem:no_caption")
            assert app.screen.shown == [7]
            app.screen.query_one("#filter").value = ""

            # 3. buckets: change resolution and batch; the histogram follows
            await pilot.press("ctrl+n")
            await settle(app, pilot)
            assert app.current_step() == "buckets"
            await _type(pilot, app.screen.query_one("#f-dataset-resolution"), "576")
            await _type(pilot, app.screen.query_one("#f-dataset-batch_size"), "2")
            hist = app.screen.query_one("#histogram")
            assert hist._report is not None and hist._report.batch_size == 2
            assert app.state.draft.resolution == (576, 576)

            # 4. options: model, steps, LR, optimizer; the VRAM estimate reacts
            await pilot.press("ctrl+n")
            await settle(app, pilot)
            assert app.current_step() == "options"
            await _type(pilot, app.screen.query_one("#o-model-pretrained_model_name_or_path"), "/models/sd15.safetensors")
            await _type(pilot, app.screen.query_one("#o-train-max_train_steps"), "321")
            await _type(pilot, app.screen.query_one("#o-optimizer-learning_rate"), "3e-6")
            app.screen.query_one("#o-optimizer-type").value = "AdamW"
            app.screen.query_one("#o-memory-gradient_checkpointing").value = False
            await settle(app, pilot)
            assert "won't fit" in screen_text(app)  # AdamW without checkpointing on 12 GB
            app.screen.query_one("#suggestions").focus()
            await pilot.press("enter")  # apply the first suggestion
            await settle(app, pilot)
            assert "won't fit" not in screen_text(app)
            chosen_optimizer = app.state.get("optimizer.type")
            chosen_gc = app.state.get("memory.gradient_checkpointing")

            # 5. review: save where we say, then quit printing the command
            await pilot.press("ctrl+n")
            await settle(app, pilot)
            assert app.current_step() == "review"
            await _paste(pilot, app.screen.query_one("#save-path"), str(run_path))
            await pilot.press("ctrl+x")
            await pilot.pause()
            return app, chosen_optimizer, chosen_gc

    app, chosen_optimizer, chosen_gc = asyncio.run(walk())
    assert app.exit_message and f"sdft train {run_path}" in app.exit_message
    config, _doc, _warnings = load_run_file(run_path)
    assert config.model.pretrained_model_name_or_path == "/models/sd15.safetensors"
    assert config.train.max_train_steps == 321
    assert config.optimizer.learning_rate == 3e-6
    assert config.optimizer.type == chosen_optimizer
    assert config.memory.gradient_checkpointing == chosen_gc
    ds = config.datasets.datasets[0]
    assert ds.resolution == (576, 576) and ds.batch_size == 2
    assert ds.subsets[0].image_dir == folder
    # everything the wizard holds is what the engine reads back
    for key, value in app.state.values.items():
        section, name = key.split(".", 1)
        if section in ("dataset", "subset"):
            continue
        assert getattr(getattr(config, section), name) == value, key


def test_navigation_keys_and_help(tmp_path):
    async def go():
        app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("f5")
            await settle(app, pilot)
            assert app.current_step() == "options"
            await pilot.press("ctrl+b")
            await settle(app, pilot)
            assert app.current_step() == "buckets"
            await pilot.press("f1")
            await settle(app, pilot)
            assert "Keys on this step" in screen_text(app)
            await pilot.press("escape")
            await pilot.press("f6")
            await settle(app, pilot)
            assert app.current_step() == "review"
            commands = [c.title for c in app.get_system_commands(app.screen)]
            assert "Go to Captions" in commands and "Preset: 12 GB card" in commands

    asyncio.run(go())


STARTUP = """
import asyncio, sys
from sdft_tui.app import SdftApp
app = SdftApp()
bad = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
assert not bad, ("after constructing the app", bad)
async def main():
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for _ in range(50):
            if app.state.hardware is not None:
                break
            await pilot.pause(0.05)
        await pilot.press("f5")
        await pilot.pause()
asyncio.run(main())
bad = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
assert not bad, ("after start-up", bad)
print("ok")
"""


def test_wizard_start_does_not_import_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True, cwd=str(tmp_path),
                         env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_options_screen_keeps_values_it_cannot_edit(tmp_path):
    """A run TOML with inline sample prompts (a list) survives a visit to the options step."""
    from engine.config.run_toml import load_run_file
    from engine.demo import make_demo_dataset

    make_demo_dataset(tmp_path / "images", count=4)
    (tmp_path / "meta.json").write_text('{"shape_000.png": {"caption": "a"}}')
    run = tmp_path / "run.toml"
    run.write_text(
        '[model]\npretrained_model_name_or_path = "model"\n\n'
        '[sample]\nprompts = ["a red circle --w 64", "a blue square"]\n\n'
        '[[datasets]]\n  [[datasets.subsets]]\n  image_dir = "images"\n  metadata_file = "meta.json"\n'
    )

    async def go():
        app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("f5")
            await settle(app, pilot)
            await pilot.press("f6")
            await settle(app, pilot)
            await pilot.press("ctrl+s")
            await settle(app, pilot)

    asyncio.run(go())
    config, _doc, _warnings = load_run_file(run)
    assert config.sample.prompts == ["a red circle --w 64", "a blue square"]


async def first_step(app) -> str | None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        return app.current_step()


def test_the_app_opens_on_the_step_it_is_given_once_there_are_images(tmp_path):
    """SdftApp(step=...) starts on that step (snapshot tests start on theirs); a folder without
    images opens on Dataset, which says why, as the step keys would."""
    from sdft_tui.session import WizardSession

    with pytest.raises(ValueError, match="no wizard step 'nope'"):
        SdftApp(step="nope")
    (tmp_path / "empty").mkdir()
    opened = {}
    for name, folder in (("images", make_dataset(tmp_path)), ("empty", tmp_path / "empty")):
        state = WizardSession()
        state.load_source(folder)
        app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path, state=state, step="buckets")

        opened[name] = asyncio.run(first_step(app))
    assert opened == {"images": "buckets", "empty": "dataset"}

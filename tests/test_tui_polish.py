"""Things a first-time user trips on, found by using the wizard over a plain 80x24 terminal.

Each test pins one fix: what the screen says (text a user reads), which key does what, and that
nothing is cut off at 80x24.
"""

from __future__ import annotations

import asyncio
import os

from engine.hardware import HardwareInfo
from sdft_tui.app import SdftApp
from tests.wizard_helpers import screen_text, settle


def demo_like_run(tmp_path, tiny_model=None):
    """The demo's shape: run.toml beside model/, images/ and metadata.json, paths relative to it."""
    from engine.demo import make_demo_dataset

    make_demo_dataset(tmp_path / "images", count=4)
    names = sorted(p.name for p in (tmp_path / "images").iterdir() if p.suffix == ".png")
    entries = ", ".join(f'"{n}": {{"caption": "a shape {i}"}}' for i, n in enumerate(names))
    (tmp_path / "metadata.json").write_text("{" + entries + "}", encoding="utf-8")
    if tiny_model is not None:
        os.symlink(tiny_model, tmp_path / "model")
    run = tmp_path / "run.toml"
    run.write_text(
        '# my run\n[model]\npretrained_model_name_or_path = "model"   # relative to this file\n\n'
        '[sample]\nprompts = ["a red circle --w 64", "a blue square"]\n\n'
        '[[datasets]]\n  [[datasets.subsets]]\n  image_dir = "images"\n  metadata_file = "metadata.json"\n',
        encoding="utf-8")
    return run


def run_app(app, scenario, size=(80, 24)):
    async def go():
        async with app.run_test(size=size) as pilot:
            await settle(app, pilot)
            await scenario(pilot)

    asyncio.run(go())


# ---------------------------------------------------------------- dataset


def test_opening_a_run_file_checks_health_and_leaves_no_spinning_bar(tmp_path):
    """`sdft RUN.toml` loads the records without a scan: the engine's check still runs, and the
    progress bar is not left animating an unknown total forever."""
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        assert app.state.health_report is not None
        assert not app.screen.query_one("#progress").display
        assert "--%" not in screen_text(app)

    run_app(app, scenario)


# ---------------------------------------------------------------- options


def test_options_detect_a_model_relative_to_the_run_file_and_flag_the_full_size_estimate(tmp_path, tiny_sd1):
    """The demo's `model` is relative to the run TOML (as the engine resolves it), whatever the cwd;
    the VRAM figure says it is for a full-size U-Net, loudly for a small test model."""
    run = demo_like_run(tmp_path, tiny_sd1)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f5")
        await settle(app, pilot)
        text = screen_text(app)
        assert "not found: model" not in text
        assert app.state.model_guess.small
        assert "full-size SD1" in text
        assert "this test model needs far less" in text
        assert all(len(line.rstrip()) <= 80 for line in text.splitlines())

    cwd = os.getcwd()
    os.chdir("/")  # the model must be found through the run file, not the cwd
    try:
        run_app(app, scenario)
    finally:
        os.chdir(cwd)


def test_checkbox_words_follow_their_state_and_inline_prompts_are_not_a_python_list(tmp_path):
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f5")
        await settle(app, pilot)
        ema = app.screen.query_one("#o-train-ema")
        assert not ema.value and str(ema.label) == "off"
        ema.focus()
        await pilot.press("space")
        await pilot.pause()
        assert ema.value and str(ema.label) == "on"
        assert app.state.get("train.ema") is True
        prompts = app.screen.query_one("#o-sample-prompts")
        assert prompts.disabled
        assert prompts.value == "2 inline prompt(s): edit them in the run file"
        assert "['a red circle" not in screen_text(app)

    run_app(app, scenario)


def test_an_emptied_number_field_is_marked_invalid(tmp_path):
    """An empty field keeps the old value in the plan: the field must show it is not taken."""
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f4")
        await settle(app, pilot)
        field = app.screen.query_one("#f-dataset-batch_size")
        field.value = ""
        await pilot.pause()
        assert field.has_class("invalid")
        valid = app.screen.query_one("#f-subset-num_repeats")
        assert field.styles.background != valid.styles.background  # visible without text to colour

    run_app(app, scenario)

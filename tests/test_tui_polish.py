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


# ---------------------------------------------------------------- captions: labeling keys and models


def test_labeling_keys_are_in_the_footer_help_and_palette_at_80x24(tmp_path):
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f3")
        await settle(app, pilot)
        footer = screen_text(app).splitlines()[-1]
        assert "f7 f8 f9 Auto-label" in footer
        assert "^n Next" in footer and "f1 All keys" in footer
        # ^l and ^s have no room left in the footer: F1 lists them (tests/test_tui_focus_visible.py)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Caption missing images", "Caption all images", "Tag all images",
                      "Re-caption the selected image", "Labeling models"):
            assert title in titles
        await pilot.press("f1")
        await pilot.pause()
        from sdft_tui.screens.help import HELP

        assert "**F7**" in HELP and "**ctrl+l**" in HELP and "**ctrl+r**" in HELP

    run_app(app, scenario)


def test_a_model_that_cannot_load_opens_the_models_dialog_where_the_folder_is_typed(tmp_path, monkeypatch):
    """Offline the default hub id cannot be fetched: the user must see why and where to fix it."""
    monkeypatch.delenv("SDFT_CAPTION_MODEL", raising=False)
    monkeypatch.setenv("SDFT_TAG_MODEL", str(tmp_path / "from-env"))
    run = demo_like_run(tmp_path)
    missing = tmp_path / "no-such-blip"
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        from sdft_tui.screens.label_models import LabelModelsScreen

        assert app.state.label_models.tag_model == str(tmp_path / "from-env")  # env presets it
        app.state.label_models.caption_model = str(missing)
        await pilot.press("f3")
        await settle(app, pilot)
        await pilot.press("f8")
        await pilot.pause()
        assert type(app.screen).__name__ == "ReplaceLabelsScreen"  # the demo's captions: asked first
        await pilot.click("#replace-all")
        for _ in range(200):
            if isinstance(app.screen, LabelModelsScreen):
                break
            await pilot.pause(0.05)
        assert isinstance(app.screen, LabelModelsScreen)
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "Labeling models" in text
        message = str(app.screen.error)
        assert "no-such-blip" in message  # the engine's message names the folder, and is on screen
        assert "BLIP model folder not found" in text
        assert "--model" not in text           # no CLI flag advice inside the wizard
        assert not app.screen.query("#label-progress")
        field = app.screen.query_one("#caption-model")
        assert field.has_focus and field.value == str(missing)
        field.value = str(tmp_path / "blip-large")
        await pilot.press("enter")
        await pilot.pause()
        assert app.state.label_models.caption_model == str(tmp_path / "blip-large")
        assert app.state.label_models.tag_model == str(tmp_path / "from-env")
        # ctrl+l reopens it, escape keeps the choice
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert isinstance(app.screen, LabelModelsScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert app.state.label_models.caption_model == str(tmp_path / "blip-large")

    run_app(app, scenario)


def test_caption_missing_with_nothing_missing_says_so_and_bulk_undo_counts(tmp_path):
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f3")
        await settle(app, pilot)
        await pilot.press("f7")  # every demo image has a caption: nothing to start
        await pilot.pause()
        assert not app.screen.query("#label-progress")
        assert any("every image has a caption" in n.message for n in app._notifications)
        app.state.bulk_edit(list(range(4)), "prefix", "photo")
        await pilot.press("ctrl+u")
        await pilot.pause()
        assert any(n.message == "restored 4 captions/tags" for n in app._notifications)

    run_app(app, scenario)


def test_review_footer_shows_help_at_80x24(tmp_path):
    """The last step has no next one: ^n leaves the footer and f1 Help fits again."""
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f6")
        await settle(app, pilot)
        footer = screen_text(app).splitlines()[-1]
        assert "f1 All keys" in footer and "^t Save+train" in footer
        assert "Next" not in footer

    run_app(app, scenario)


def test_health_lines_longer_than_the_pane_are_shown_whole(tmp_path):
    """Problem lines are longer than the pane at 80 columns: they wrap."""
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (16, 12)).save(folder / "tiny.png")
    Image.new("CMYK", (512, 512)).save(folder / "cmyk.jpg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        path = app.screen.query_one("#path")
        path.value = str(folder)
        path.focus()
        await pilot.press("enter")
        await settle(app, pilot)
        text = screen_text(app)
        assert "3 images (2 usable), 0 captioned" in text and "longest 0 tokens" not in text
        shown = " ".join(screen_text(app).replace("│", " ").split())
        for name, message in app.screen.query_one("#health").findings["unreadable"][1]:
            assert name in shown and message.split()[-1] in shown  # wrapped, never cut

    run_app(app, scenario)


def test_a_preset_without_a_gpu_names_its_card(tmp_path):
    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f5")
        await settle(app, pilot)
        app.screen.apply_preset(8)
        await pilot.pause()
        text = " ".join(screen_text(app).split())  # the GPU line wraps at 80 columns
        assert "planning for an 8 GB card" in text
        assert "fits an 8 GB card" in text or "won't fit an 8 GB card" in text

    run_app(app, scenario)


def test_bulk_tag_edits_go_to_the_tags_of_an_image_that_has_both(tmp_path):
    """A metadata entry with a caption and tags: "Add tag(s)" changes the tags, not the sentence."""
    import json

    from sdft_tui.session import WizardSession

    run = demo_like_run(tmp_path)
    meta = json.loads((tmp_path / "metadata.json").read_text(encoding="utf-8"))
    for entry in meta.values():
        entry["tags"] = "circle, red"
    (tmp_path / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    state = WizardSession()
    state.load_source(run)
    assert state.bulk_edit([0, 1], "add_tag", "round") == 2
    assert state.records[0].tags == "circle, red, round" and state.records[0].caption == "a shape 0"
    assert state.records[0].tag_count() == 3
    saved = json.loads((tmp_path / "metadata.json").read_text(encoding="utf-8"))
    assert saved[state.records[0].key]["tags"] == "circle, red, round"
    state.undo()
    assert state.records[0].tags == "circle, red" and state.records[1].tags == "circle, red"


def test_moving_to_another_image_saves_the_edit_and_undo_brings_the_old_one_back(tmp_path):
    import json

    run = demo_like_run(tmp_path)
    app = SdftApp(run, hardware=HardwareInfo(), start_dir=tmp_path)

    def captions():
        return sorted(e["caption"] for e in json.loads((tmp_path / "metadata.json").read_text()).values())

    async def scenario(pilot):
        await pilot.press("f3")
        await settle(app, pilot)
        app.screen.query_one("#editor").load_text("a new caption")
        table = app.screen.query_one("#captions")
        table.focus()
        await pilot.press("down")
        await pilot.pause()
        assert "a new caption" in captions(), "moving on keeps the edit"
        assert any("saved the caption of" in n.message and "ctrl+u" in n.message for n in app._notifications)
        count = len(app._notifications)
        await pilot.press("down")                 # nothing typed: nothing saved, no toast
        await pilot.pause()
        assert len(app._notifications) == count
        await pilot.press("ctrl+u")
        await pilot.pause()
        assert "a new caption" not in captions() and "a shape 0" in captions()

    run_app(app, scenario)


def test_editor_switches_between_caption_and_tags(tmp_path):
    """An image with both a caption and tags: ctrl+k edits the tags, ctrl+s writes the tags file."""
    from textual.widgets import TextArea

    from engine.demo import make_demo_dataset

    make_demo_dataset(tmp_path / "images", count=2)
    first = sorted((tmp_path / "images").glob("*.png"))[0]
    caption_file, tags_file = first.with_suffix(".caption"), first.with_suffix(".txt")
    caption_before = caption_file.read_text()
    app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        path = app.screen.query_one("#path")
        path.value = str(tmp_path / "images")
        path.focus()
        await pilot.press("enter")
        await settle(app, pilot)
        await pilot.press("f3")
        await settle(app, pilot)
        editor = app.screen.query_one("#editor", TextArea)
        assert editor.text.strip() == caption_before.strip()
        await pilot.press("ctrl+k")
        await pilot.pause()
        assert editor.text.strip() == tags_file.read_text().strip()
        assert "tags of" in str(app.screen.query_one("#editing").render())
        editor.load_text("circle, red circle, my tag")
        await pilot.press("ctrl+s")
        await pilot.pause()

    run_app(app, scenario)
    assert tags_file.read_text().strip() == "circle, red circle, my tag"
    assert caption_file.read_text() == caption_before

"""The wizard's keyboard flow at 80x24, as a new user meets it: where focus lands on each step,
every Tab stop visible, typed values kept, presets that say what they change, readable
checkboxes, Quit and Help always in the footer, wrapped health lines, the one-bucket note,
what `.txt` sidecars hold, and where the metadata JSON goes."""

from __future__ import annotations

import json

import pytest
from textual.containers import ScrollableContainer, VerticalScroll
from textual.widgets import DataTable, Input, Select, TextArea

from engine.config.run_toml import load_run_file
from engine.data.buckets import BucketSettings, single_bucket_from_min_side
from engine.hardware import HardwareInfo
from sdft_tui.app import SdftApp
from sdft_tui.session import WizardSession
from tests.test_tui_polish import demo_like_run, run_app
from tests.wizard_helpers import make_dataset, screen_text, settle

STEP_KEYS = {"dataset": "f2", "captions": "f3", "buckets": "f4", "options": "f5", "review": "f6"}
SIZE = (80, 24)


def folder_app(tmp_path, step: str | None = None, **kwargs):
    """The wizard with a scanned folder of generated images (8 images, .caption and .txt sidecars),
    opened on Dataset or on ``step`` (a test that looks at one step starts there)."""
    folder = make_dataset(tmp_path)
    state = WizardSession()
    state.load_source(folder)
    if step is not None:
        state.run_health_check()   # the Dataset step runs it on opening; this app skips that step
    return SdftApp(hardware=HardwareInfo(), start_dir=tmp_path, state=state, step=step or "dataset",
                   **kwargs), folder


def notes(app) -> str:
    return "\n".join(n.message for n in app._notifications)


# ---------------------------------------------------------------- focus


def test_each_step_opens_with_focus_on_its_main_control(tmp_path):
    app = SdftApp(demo_like_run(tmp_path), hardware=HardwareInfo(), start_dir=tmp_path)
    expected = {"dataset": "path", "captions": "captions", "buckets": "f-dataset-resolution",
                "options": "o-model-pretrained_model_name_or_path"}

    async def scenario(pilot):
        for step, wid in expected.items():
            await pilot.press(STEP_KEYS[step])
            await settle(app, pilot)
            assert app.focused is not None and app.focused.id == wid, (step, app.focused)
            assert _visible(app, app.focused), step
        # the table has the keys: down moves to the next image at once
        await pilot.press("f3")
        await pilot.press("down")
        await pilot.pause()
        assert app.screen.query_one("#captions", DataTable).cursor_row == 1

    run_app(app, scenario, SIZE)


def test_saving_a_caption_keeps_the_cursor_on_its_row(tmp_path):
    app, _folder = folder_app(tmp_path, step="captions")

    async def scenario(pilot):
        screen = app.screen
        table = screen.query_one("#captions", DataTable)
        await pilot.press("down", "down", "down")
        await pilot.pause()
        assert table.cursor_row == 3
        index = screen.shown[3]
        editor = screen.query_one("#editor", TextArea)
        editor.focus()
        editor.load_text("a new caption for row three")
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        assert table.cursor_row == 3 and screen.current == index
        assert app.state.records[index].edit_text == "a new caption for row three"
        await pilot.press("ctrl+u")  # undo goes back to the restored image too
        await settle(app, pilot)
        assert table.cursor_row == 3 and screen.current == index

    run_app(app, scenario, SIZE)


# ---------------------------------------------------------------- Tab stops


def _visible(app, widget) -> bool:
    """On screen: a non-empty region inside the terminal, shown, with every ancestor shown."""
    region = widget.region
    width, height = app.size
    if region.width <= 0 or region.height <= 0:
        return False
    if region.x < 0 or region.y < 0 or region.right > width or region.bottom > height:
        return False
    node = widget
    while node is not None and node is not app.screen:
        if not node.display or not node.visible:
            return False
        node = node.parent
    return True


@pytest.mark.slow
def test_every_tab_stop_is_visible_on_every_step(tmp_path):
    app, _folder = folder_app(tmp_path)

    async def scenario(pilot):
        for step, key in STEP_KEYS.items():
            await pilot.press(key)
            await settle(app, pilot)
            first = app.focused
            assert first is not None and _visible(app, first), (step, first)
            seen = []
            for _ in range(60):
                await pilot.press("tab")
                await pilot.pause()
                widget = app.focused
                assert widget is not None and _visible(app, widget), (step, widget, widget and widget.region)
                if type(widget) in (ScrollableContainer, VerticalScroll):
                    # a plain scrolled view (no cursor of its own) that takes Tab must look
                    # focused: its border changes
                    focused_border = widget.styles.border
                    seen.append((widget, focused_border))
                if widget is first:
                    break
            else:
                raise AssertionError(f"Tab never came back to the first stop on {step}")
            for widget, focused_border in seen:
                assert widget.styles.border != focused_border, (step, widget)

    run_app(app, scenario, SIZE)


# ---------------------------------------------------------------- typed values and presets


def test_typed_values_survive_a_preset_and_a_tab(tmp_path):
    app = SdftApp(demo_like_run(tmp_path), hardware=HardwareInfo(), start_dir=tmp_path)

    async def scenario(pilot):
        await pilot.press("f5")
        await settle(app, pilot)
        screen = app.screen
        model = screen.query_one("#o-model-pretrained_model_name_or_path", Input)
        assert app.focused is model
        model.value = ""
        await pilot.press(*"/my/models/sd15")
        steps = screen.query_one("#o-train-max_train_steps", Input)
        steps.focus()
        typed = steps.value + "x"
        await pilot.press("end", "x")  # half-typed, not a number yet
        await pilot.pause()
        assert "invalid" in steps.classes
        await pilot.press("ctrl+l")  # the preset, with keys only
        await pilot.press("enter", "down", "enter")
        await settle(app, pilot)
        assert app.state.preset_applied == 8
        await pilot.press("tab")
        await settle(app, pilot)
        assert model.value == "/my/models/sd15" == app.state.get("model.pretrained_model_name_or_path")
        assert steps.value == typed  # still what the user typed, to finish
        await pilot.press("f4", "f5")  # a step change and back keeps it too
        await settle(app, pilot)
        assert model.value == "/my/models/sd15" and steps.value == typed

    run_app(app, scenario, SIZE)


def test_a_preset_says_what_it_changes_and_keeps_the_batch_size_set_on_buckets(tmp_path):
    app, _folder = folder_app(tmp_path, step="buckets")

    async def scenario(pilot):
        batch = app.screen.query_one("#f-dataset-batch_size", Input)
        batch.value = "4"
        await pilot.pause()
        assert app.state.get("dataset.batch_size") == 4
        await pilot.press("f5")
        await settle(app, pilot)
        before = dict(app.state.values)
        app.screen.apply_preset(8)
        await pilot.pause()
        assert app.state.get("dataset.batch_size") == 4
        message = notes(app)
        assert "kept Batch size 4 as set on Buckets (the preset picks 1" in message
        changed = [k for k, v in app.state.values.items() if before.get(k) != v]
        assert changed, "the 8 GB preset changes something from the defaults"
        from sdft_tui.screens.options import field_label

        for key in changed:  # every changed field is named, with its old and new value
            assert field_label(key) in message, key

    run_app(app, scenario, SIZE)


# ---------------------------------------------------------------- checkboxes, footer, health


def test_checkboxes_read_on_or_off_without_colour(tmp_path):
    app, _folder = folder_app(tmp_path, step="buckets")

    async def scenario(pilot):
        text = screen_text(app)
        assert "▐X▌ Bucketing" in text and "▐ ▌ No upscale" in text
        box = app.screen.query_one("#no_upscale")
        box.focus()
        await pilot.press("space")
        await pilot.pause()
        assert app.state.get("dataset.bucket_no_upscale") is True
        assert "▐X▌ No upscale" in screen_text(app)
        await pilot.press("f5")
        await settle(app, pilot)
        lines = {line.split("▐")[0].strip(): line for line in screen_text(app).splitlines() if "▐" in line}
        ema = next(v for k, v in lines.items() if k.startswith("Grad checkpointing"))
        assert "▐X▌ on" in ema  # the wizard's default: on, and it says so
        assert app.screen.query_one("#o-train-ema").value is False

    run_app(app, scenario, SIZE)


def test_quit_and_help_stay_in_the_footer_on_every_step_at_80_columns(tmp_path):
    app, _folder = folder_app(tmp_path)

    async def scenario(pilot):
        for step, key in STEP_KEYS.items():
            await pilot.press(key)
            await settle(app, pilot)
            footer = screen_text(app).splitlines()[-1]
            assert "^q Quit" in footer and "f1 All keys" in footer, (step, footer)

    run_app(app, scenario, SIZE)


def test_a_long_health_line_wraps_instead_of_being_cut(tmp_path):
    from PIL import Image

    folder = tmp_path / "holiday"
    folder.mkdir()
    name = "a very long file name of a picture taken on the beach in the summer 0001.png"
    Image.new("RGB", (512, 512)).save(folder / name)
    state = WizardSession()
    state.load_source(folder)
    app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path, state=state)

    async def scenario(pilot):
        await settle(app, pilot)
        health = app.screen.query_one("#health")
        await pilot.pause()
        lines = screen_text(app).splitlines()
        first = next(i for i, line in enumerate(lines) if "a very long file name" in line)
        last = next(i for i, line in enumerate(lines) if "unconditionally" in line)
        assert last > first  # one finding, rendered on more than one line
        shown = " ".join(" ".join(line.split("│", 1)[-1].split()) for line in lines[first:last + 1])
        assert name in shown and health.region.right <= 80

    run_app(app, scenario, SIZE)


# ---------------------------------------------------------------- buckets: one bucket for all


def test_the_engine_names_a_single_bucket_caused_by_the_minimum_side():
    sizes = [(600, 400), (400, 600), (512, 512), (800, 450)]
    single = single_bucket_from_min_side(sizes, BucketSettings(min_bucket_reso=512))
    assert single is not None and single.bucket == (512, 512) and single.min_bucket_reso == 512
    assert single.lower_min == 448 and single.buckets_then > 1
    assert "one bucket (512x512)" in single.message and "448" in single.message
    assert single_bucket_from_min_side(sizes, BucketSettings()) is None          # several buckets
    assert single_bucket_from_min_side([(512, 512)] * 3, BucketSettings(min_bucket_reso=512)) is None  # all square
    assert single_bucket_from_min_side(sizes, BucketSettings(min_bucket_reso=512, enable_bucket=False)) is None


def test_the_buckets_step_says_when_every_image_is_in_one_bucket(tmp_path):
    app, _folder = folder_app(tmp_path, step="buckets")

    async def scenario(pilot):
        def right_pane() -> str:
            return " ".join(" ".join(line.split("│", 1)[-1].split()) for line in screen_text(app).splitlines())

        assert "every image is in one bucket" not in right_pane()
        app.screen.query_one("#f-dataset-min_bucket_reso", Input).value = "512"
        await pilot.pause()
        text = right_pane()
        assert "every image is in one bucket (512x512): a minimum bucket side of 512" in text

    run_app(app, scenario, SIZE)


# ---------------------------------------------------------------- sidecars and metadata


def test_the_dataset_step_says_what_txt_sidecars_hold_and_the_switch_sets_the_run_keys(tmp_path):
    app, folder = folder_app(tmp_path)

    async def scenario(pilot):
        await settle(app, pilot)
        assert ".txt sidecars read as tags" in screen_text(app)
        odd = app.state.records[1]
        assert odd.tags == "tag1, solo, outdoors" and odd.caption is None
        app.screen.query_one("#sidecar-mode", Select).value = "captions"
        await settle(app, pilot)
        assert ".txt sidecars read as captions" in screen_text(app)
        assert app.state.get("data.caption_extension") == ".txt"
        assert app.state.get("data.tags_extension") == ".tags"
        odd = app.state.records[1]
        assert odd.caption == "tag1, solo, outdoors" and odd.tags is None  # scanned again
        run = app.state.save(tmp_path / "run.toml")
        config, _doc, _warnings = load_run_file(run)
        assert config.data.caption_extension == ".txt" and config.data.tags_extension == ".tags"
        meta = json.loads((tmp_path / "run-metadata.json").read_text(encoding="utf-8"))
        assert meta["img01.png"]["caption"] == "tag1, solo, outdoors"

    run_app(app, scenario, SIZE)


def test_a_run_file_reopened_keeps_its_sidecar_mode(tmp_path):
    state = WizardSession()
    state.load_source(make_dataset(tmp_path))
    state.set_sidecar_mode("captions")
    run = state.save(tmp_path / "run.toml")
    again = WizardSession()
    again.load_source(run)
    assert again.draft.sidecar_mode == "captions"
    assert again.render_toml(run) == run.read_text(encoding="utf-8")


def test_the_metadata_json_goes_into_the_run_folder_unless_asked(tmp_path):
    state = WizardSession()
    folder = make_dataset(tmp_path)
    state.load_source(folder)
    run = state.save(tmp_path / "runs" / "first.toml")
    assert not (folder / "sdft-metadata.json").exists()
    assert sorted(p.suffix for p in folder.iterdir()) == sorted(
        p.suffix for p in make_dataset(tmp_path / "again").iterdir())  # the image folder is as it was
    meta_path = tmp_path / "runs" / "first-metadata.json"
    assert len(json.loads(meta_path.read_text(encoding="utf-8"))) == 8
    config, _doc, _warnings = load_run_file(run)
    subset = config.datasets.datasets[0].subsets[0]
    assert subset.metadata_file == meta_path and subset.image_dir == folder
    from engine.data.metadata import read_metadata

    assert len(read_metadata(subset.metadata_file, subset.image_dir).entries) == 8  # keys resolve

    state.project.metadata_beside_images = True  # asked for: beside the images
    state.save(tmp_path / "runs" / "second.toml")
    assert (folder / "sdft-metadata.json").exists()


def test_the_dataset_step_switches_where_the_metadata_goes(tmp_path):
    app, folder = folder_app(tmp_path)

    async def scenario(pilot):
        await settle(app, pilot)
        assert "beside the run file" in screen_text(app)
        box = app.screen.query_one("#metadata-beside")
        # the switch's words say what "on" does, whichever way it is set
        assert str(box.label) == "in the image folder" and not box.value
        box.focus()
        await pilot.press("space")
        await pilot.pause()
        assert app.state.project.metadata_beside_images and "in the image folder" in screen_text(app)
        assert "JSON in the image folder" in screen_text(app) and str(box.label) == "in the image folder"
        app.state.save(tmp_path / "run.toml")
        assert (folder / "sdft-metadata.json").exists()

    run_app(app, scenario, SIZE)


# ---------------------------------------------------------------- kohya's N_name folders


def test_kohyas_folders_open_as_folder_subsets_and_no_metadata_file_is_offered(tmp_path):
    from PIL import Image

    for name in ("5_sks dog", "2_sks cat"):
        (tmp_path / "img" / name).mkdir(parents=True)
        Image.new("RGB", (512, 512)).save(tmp_path / "img" / name / "a.png")
    (tmp_path / "img" / "5_sks dog" / "a.caption").write_text("sks dog, running", encoding="utf-8")
    state = WizardSession()
    state.load_source(tmp_path / "img")
    app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path, state=state)

    async def scenario(pilot):
        await settle(app, pilot)
        text = " ".join(screen_text(app).split())
        assert "2 images" in text and "2 folder subsets (kohya's DreamBooth method)" in text
        assert not app.screen.query_one("#metadata-row").display, "folder subsets train as they are"

    run_app(app, scenario, (100, 30))
    written = state.project.render(tmp_path / "run.toml")
    assert 'image_dir = "img/2_sks cat"' in written and 'class_tokens = "sks dog"' in written
    assert "metadata_file" not in written

"""Options has a Sample prompt field (from a caption of the dataset) shown when sampling is on,
and each step shows the engine's problems with its own fields, not only Review (80x24)."""

from __future__ import annotations

from engine.config.problems import Problem
from sdft_tui.session import problem_step
from tests.test_tui_keyboard_flow import folder_app
from tests.test_tui_polish import run_app
from tests.wizard_helpers import screen_text, settle

PROMPT_ROW = "#row-o-sample-prompts"


async def _type_into(app, pilot, selector: str, text: str) -> None:
    field = app.screen.query_one(selector)
    field.focus()
    await pilot.pause()
    field.value = ""
    await pilot.press(*text) if text else None
    await settle(app, pilot)


def test_sampling_on_shows_a_prompt_taken_from_a_caption(tmp_path):
    app, _folder = folder_app(tmp_path, step="options")

    async def scenario(pilot):
        row = app.screen.query_one(PROMPT_ROW)
        assert not row.display                       # no sampling: no prompt to ask for
        await _type_into(app, pilot, "#o-sample-every_n_steps", "50")
        assert row.display
        # the first image's text as it trains (img00.caption)
        assert app.state.get("sample.prompts") == ["a photo of thing 0, red, blue"]
        assert app.screen.query_one("#o-sample-prompts").value == "a photo of thing 0, red, blue"
        assert 'prompts = ["a photo of thing 0, red, blue"]' in app.state.render_toml()
        assert not app.screen.query_one("#step-problems").display

        await _type_into(app, pilot, "#o-sample-prompts", "a red cube")
        assert app.state.get("sample.prompts") == ["a red cube"]
        assert 'prompts = ["a red cube"]' in app.state.render_toml()

    run_app(app, scenario)


def test_a_problem_shows_on_the_step_that_owns_its_field(tmp_path):
    app, _folder = folder_app(tmp_path, step="options")

    async def scenario(pilot):
        await _type_into(app, pilot, "#o-sample-every_n_steps", "50")
        await _type_into(app, pilot, "#o-sample-prompts", "")   # the prompt removed
        assert app.state.get("sample.prompts") is None
        box = app.screen.query_one("#step-problems")
        assert box.display
        text = screen_text(app)
        assert "error: Sample every N steps: has no effect without sample prompts" in text, text
        label = app.screen.query_one("#row-o-sample-every_n_steps Label.form-label")
        assert label.has_class("has-problem")                   # the field's own label is marked
        assert not app.screen.query_one("#row-o-train-max_train_steps Label.form-label").has_class("has-problem")
        # a Buckets problem is shown on Buckets, not here
        app.state.set("dataset.min_bucket_reso", 1024)
        app.state.set("dataset.max_bucket_reso", 256)
        app.screen.refresh_view()
        await pilot.pause()
        assert "bucket_reso" not in screen_text(app)
        await pilot.press("f4")
        await settle(app, pilot)
        await pilot.pause(0.2)   # the step's first showing composes it
        box = app.screen.query_one("#step-problems")
        assert box.display and "error: Min bucket side" in screen_text(app)   # wrapped in its column
        assert "error: Min bucket side: min_bucket_reso 1024 > max_bucket_reso 256" in str(box.render())
        assert app.screen.query_one("#f-dataset-min_bucket_reso").parent.query_one("Label").has_class("has-problem")
        # typing the prompt back clears the problem on Options
        await pilot.press("f5")
        await settle(app, pilot)
        await _type_into(app, pilot, "#o-sample-prompts", "a cube")
        assert "Sample every N steps: has no effect" not in screen_text(app)
        assert not label.has_class("has-problem")

    run_app(app, scenario)


def test_several_prompts_are_shown_not_edited_and_a_file_name_is_a_prompts_file(tmp_path):
    app, _folder = folder_app(tmp_path)
    app.state.set("sample.every_n_steps", 10)
    app.state.set("sample.prompts", ["one", "two"])
    (tmp_path / "prompts.txt").write_text("a cube --w 512\n", encoding="utf-8")   # beside the run file

    async def scenario(pilot):
        await pilot.press("f5")
        await settle(app, pilot)
        field = app.screen.query_one("#o-sample-prompts")
        assert field.disabled and field.value == "2 inline prompt(s): edit them in the run file"
        app.state.set("sample.prompts", None)
        app.screen.on_screen_resume()
        await pilot.pause()
        assert not field.disabled and field.value == ""
        await _type_into(app, pilot, "#o-sample-prompts", "prompts.txt")
        assert app.state.get("sample.prompts") == "prompts.txt"      # an existing file: read as prompts
        assert 'prompts = "prompts.txt"' in app.state.render_toml()
        await _type_into(app, pilot, "#o-sample-prompts", "missing.txt")
        assert app.state.get("sample.prompts") == ["missing.txt"]    # no such file: a prompt

    run_app(app, scenario)


def test_each_key_belongs_to_one_step():
    assert problem_step("sample.every_n_steps") == "options"
    assert problem_step("optimizer.learning_rate") == "options"
    assert problem_step("datasets[0].min_bucket_reso") == "buckets"
    assert problem_step("general.batch_size") == "buckets"
    assert problem_step("datasets[0].subsets[0].num_repeats") == "buckets"
    assert problem_step("datasets[0].subsets[0].metadata_file") == "dataset"
    assert problem_step("data.caption_extension") == "dataset"
    assert problem_step("logging.log_with") == "review"


def test_the_full_checks_problems_stay_on_their_step_until_the_file_changes(tmp_path):
    app, _folder = folder_app(tmp_path)
    state = app.state
    found = Problem("optimizer.type", "needs the package bitsandbytes", "pip install bitsandbytes")
    state.checked = (state.render_toml(), [found])
    assert state.step_problems("options") == [found]
    assert state.step_problems("buckets") == []
    state.set("optimizer.learning_rate", 1e-5)   # the file changed: the old verdict no longer applies
    assert state.step_problems("options") == []


def test_the_default_prompt_is_the_first_text_that_trains_on_one_line(tmp_path):
    from PIL import Image

    from engine.project.project import Project

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (64, 64)).save(folder / f"{name}.png")
    (folder / "b.caption").write_text("a dog\non the beach --n blurry\n", encoding="utf-8")   # a: none
    (folder / "b.txt").write_text("sand, sea\n", encoding="utf-8")
    project = Project()
    project.open(folder)
    # b's caption and tags as training joins them, on one line, " --" not read as a prompt option
    assert project.default_sample_prompt() == "a dog on the beach -n blurry,sand, sea"
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.new("RGB", (64, 64)).save(empty / "x.png")
    project.open(empty)
    assert project.default_sample_prompt() is None


def test_a_new_wizard_with_no_dataset_shows_no_problem_yet(tmp_path):
    """Opened in an empty folder, the Dataset step invites a choice; the draft's placeholder
    metadata path is not reported as missing (seen in tmux at 80x24: an error before any input)."""
    from engine.hardware import HardwareInfo
    from sdft_tui.app import SdftApp
    from sdft_tui.session import WizardSession

    app = SdftApp(hardware=HardwareInfo(), start_dir=tmp_path, state=WizardSession())

    async def scenario(pilot):
        await settle(app, pilot)
        text = screen_text(app)
        assert "No dataset yet" in text, text
        assert "error" not in text and "not found" not in text, text
        assert not app.screen.query_one("#step-problems").display

    run_app(app, scenario)


def test_a_missing_metadata_file_is_named_as_the_run_file_wrote_it(tmp_path):
    from engine.config.dataset import parse_dataset_tables
    from engine.config.problems import ProblemList

    problems = ProblemList()
    parse_dataset_tables({"datasets": [{"subsets": [{"metadata_file": "meta/missing.json", "image_dir": "img"}]}]},
                         problems=problems, base_dir=tmp_path)
    messages = [p.message for p in problems.items if p.key.endswith("metadata_file")]
    assert messages == ["metadata file not found: meta/missing.json"], messages

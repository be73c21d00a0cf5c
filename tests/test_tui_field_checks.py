"""A value typed into the wizard is judged by the engine's own key checks (the ones `--check` runs),
at once, in the engine's words; a step holding text the run file did not take cannot be left,
so the file never silently keeps an old value while the screen shows another."""

from __future__ import annotations

from engine.config.dataset_specs import DatasetSpec
from engine.hardware import HardwareInfo
from engine.project.run_draft import field_meta, value_problem
from sdft_tui.app import SdftApp
from tests.test_tui_polish import demo_like_run, run_app
from tests.wizard_helpers import screen_text, settle


def notes(app) -> str:
    return "\n".join(n.message for n in app._notifications)


def test_the_engine_judges_one_value_as_check_does():
    assert value_problem("dataset.min_bucket_reso", -5) == "must be at least 1, got -5"
    assert value_problem("dataset.bucket_reso_steps", 12).startswith("must be a positive multiple of 8")
    assert value_problem("dataset.resolution", [640, 0]) == "must be positive, got [640, 0]"
    assert value_problem("optimizer.learning_rate", -1.0) == "must be at least 0.0, got -1.0"
    assert value_problem("model.max_token_length", 100).startswith("must be one of 75, 150, 225")
    for key, value in (("dataset.resolution", [640, 448]), ("subset.num_repeats", 3), ("train.seed", None),
                       ("optimizer.learning_rate", 1e-5), ("general.batch_size", 2)):
        assert value_problem(key, value) is None, key
    assert field_meta("dataset.min_bucket_reso")["doc"] == DatasetSpec.__dataclass_fields__["min_bucket_reso"].metadata["doc"]


def reject_then_fix(tmp_path, *, step_key, key, bad, said, good, leave_key, next_step, shown):
    """Type ``bad`` into ``key``'s field on the step behind ``step_key``: it is marked, not taken,
    ``said`` appears where ``shown(app, field)`` looks and in the notice when ``leave_key`` tries to
    leave; after ``good`` the value is taken and the step is left for ``next_step``."""
    app = SdftApp(demo_like_run(tmp_path), hardware=HardwareInfo(), start_dir=tmp_path)
    prefix = "#f-" if key.startswith(("dataset.", "subset.")) else "#o-"

    async def scenario(pilot):
        await pilot.press(step_key)
        await settle(app, pilot)
        step = app.screen.STEP
        field = app.screen.query_one(prefix + key.replace(".", "-"))
        before = app.state.get(key)
        field.value = bad
        await pilot.pause()
        assert field.has_class("invalid")
        assert app.state.get(key) == before           # not taken ...
        assert said in shown(app, field)              # ... and said where it shows
        await pilot.press(leave_key)
        await settle(app, pilot)
        assert app.screen.STEP == step
        assert said in notes(app)
        field.value = good
        await pilot.pause()
        assert not field.has_class("invalid") and app.state.get(key) == type(before)(good)
        await pilot.press(leave_key)
        await settle(app, pilot)
        assert app.screen.STEP == next_step

    run_app(app, scenario)


def test_a_bad_bucket_value_is_named_and_the_step_cannot_be_left_until_it_is_fixed(tmp_path):
    reject_then_fix(tmp_path, step_key="f4", key="dataset.min_bucket_reso", bad="-5", good="64",
                    said="Min bucket side: must be at least 1, got -5", leave_key="ctrl+n", next_step="options",
                    shown=lambda app, _field: screen_text(app))


def test_an_option_out_of_its_range_is_refused_in_the_engines_words(tmp_path):
    reject_then_fix(tmp_path, step_key="f5", key="optimizer.learning_rate", bad="-1", good="2e-5",
                    said="Learning rate: must be at least 0.0, got -1.0", leave_key="f6", next_step="review",
                    shown=lambda _app, field: str(field.tooltip))

"""The wizard's option keys and its steps each live in one list: the Options form shows exactly
the engine's keys, typed by the schema, and every step's key opens that step."""

from __future__ import annotations

import typing
from dataclasses import fields

from engine.config import schema
from engine.project.run_draft import DRAFT_KEYS, SIDECAR_KEYS
from engine.project.wizard_options import OPTION_KEYS, WIZARD_OPTIONS, option_field, option_fields
from sdft_tui.app import SdftApp
from sdft_tui.screens.help import HelpScreen
from sdft_tui.screens.wizard_base import STEPS
from tests.test_tui_keyboard_flow import folder_app
from tests.test_tui_polish import run_app
from tests.wizard_helpers import settle


def _declared(key: str):
    section, name = key.split(".", 1)
    cls = schema.SECTIONS[section]
    return typing.get_type_hints(cls)[name], next(f for f in fields(cls) if f.name == name).metadata


def test_every_key_the_wizard_edits_is_in_the_one_list_once():
    assert len(OPTION_KEYS) == len(set(OPTION_KEYS))
    assert set(DRAFT_KEYS) == set(OPTION_KEYS) | set(SIDECAR_KEYS)
    for key in OPTION_KEYS:
        _declared(key)   # a schema key (raises StopIteration / KeyError otherwise)
    assert [f.key for f in option_fields()] == [key for key, _label in WIZARD_OPTIONS]


def test_each_field_takes_its_kind_and_choices_from_the_schema():
    for field in option_fields():
        hint, meta = _declared(field.key)
        if meta.get("choices"):
            assert field.kind == "select"
            assert [value for _words, value in field.choices] == [c for c in meta["choices"] if c is not None]
        elif hint is bool:
            assert field.kind == "bool", field.key
        assert field.doc == meta["doc"]
    assert option_field("optimizer.lr_warmup_steps").kind == "number"    # int | float: a fraction too
    assert option_field("train.max_train_epochs").kind == "int?"         # int | None: empty = unset
    assert [v for _w, v in option_field("model.v2").choices] == [schema.AUTO, True, False]
    assert option_field("train.mode").choices[0] == ("full fine-tune", "full")
    from engine.registry.optimizers import OPTIMIZERS

    assert {v for _w, v in option_field("optimizer.type").choices} >= {e.name for e in OPTIMIZERS}


def test_the_options_form_shows_exactly_the_engine_keys(tmp_path):
    app, _folder = folder_app(tmp_path, step="options")

    async def scenario(pilot):
        form = app.screen.query_one("#options-form")
        shown = [row.children[1].id for row in form.query("FormRow")]
        assert shown == ["o-" + key.replace(".", "-") for key in OPTION_KEYS]
        labels = [str(row.children[0].render()) for row in form.query("FormRow")]
        assert labels == [label for _key, label in WIZARD_OPTIONS]

    run_app(app, scenario)


def test_each_step_key_opens_its_step_and_help_lists_them(tmp_path):
    app, _folder = folder_app(tmp_path)
    bound = {b.key: b.action for b in SdftApp.BINDINGS}
    assert all(bound[step.key] == f"goto({step.name!r})" for step in STEPS)
    assert set(SdftApp.SCREENS) == {step.name for step in STEPS}

    async def scenario(pilot):
        for step in (*reversed(STEPS), *STEPS):   # backwards too: each key, not "the next one"
            await pilot.press(step.key)
            await settle(app, pilot)
            assert app.current_step() == step.name, step
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        listed = app.screen.query_one("Markdown").source
        labels = ", ".join(step.label for step in STEPS)
        assert f"| **{STEPS[0].key.upper()} … {STEPS[-1].key.upper()}** | jump to {labels} |" in listed

    run_app(app, scenario)

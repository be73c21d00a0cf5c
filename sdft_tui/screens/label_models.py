"""The labeling models dialog (captions step, ctrl+l): which BLIP captioner and which tagger run.

Each is a local model folder or a hub id; empty means the engine's default (downloaded only when
online). Offline, a failed f7/f8/f9/ctrl+r opens this dialog with the engine's message so the user
sees at once where to type the folder. The choice lasts for the session (it is not part of the run
TOML: labeling happens before training); SDFT_CAPTION_MODEL / SDFT_TAG_MODEL preset it.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from engine.registry.labelers import LABELERS
from sdft_tui.screens.wizard_base import FormRow
from sdft_tui.session import LabelModels

TAGGERS = tuple((e.label, e.name) for e in LABELERS if e.kind == "tags")


def engine_defaults() -> tuple[str, str]:
    """The engine's default BLIP and WD14 hub ids (a light import: no torch, no transformers)."""
    from engine.labeling.options import DEFAULT_BLIP, DEFAULT_WD14

    return DEFAULT_BLIP, DEFAULT_WD14


def wizard_hint(message: str) -> str:
    """The engine's advice names the CLI flag (``--model``); in the wizard the folder is typed below.

    (engine.labeling.sources takes a ``flag`` argument that the runner does not pass on yet.)
    """
    message = message.replace("copy the folder here and pass it with --model FOLDER",
                              "copy the folder to this machine and type its path below")
    return re.sub(r" with --model\b(?: FOLDER)?", " in a field below", message)


class LabelModelsScreen(ModalScreen):
    """Dismisses with a LabelModels, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    LabelModelsScreen { align: center middle; }
    #models-dialog { width: 78; max-width: 100%; height: auto; max-height: 100%; padding: 0 1;
                     background: $panel; border: thick $primary; }
    #models-dialog FormRow > Label.form-label { width: 16; }
    /* boxed fields (not compact): on a panel a compact one is one shade apart from it, and an
       empty one shows its default as a placeholder that reads like a value */
    #row-caption-model > Label.form-label, #row-tag-model > Label.form-label { margin-top: 1; }
    #models-error { height: auto; max-height: 9; color: $error; margin-bottom: 1; }
    #models-help { height: auto; color: $text-muted; margin-bottom: 1; }
    #models-buttons { height: auto; margin-top: 1; }
    #models-buttons Button { margin-right: 2; }
    """

    def __init__(self, models: LabelModels, error: str | None = None):
        super().__init__()
        self.models = models
        self.error = error

    def compose(self):
        blip, wd14 = engine_defaults()
        with Vertical(id="models-dialog"):
            yield Label(Text("Labeling models (f7 f8 f9, ctrl+r)", style="bold"))
            if self.error:   # the error says what to type; the general help would push the fields off 24 rows
                yield Static(Text(wizard_hint(self.error)), id="models-error")
            else:
                yield Static(Text("A local folder, or a hub id (needs internet); empty: the default shown.\n"
                                  "BLIP folder: config.json + weights. Tagger folder: model.onnx + "
                                  "selected_tags.csv (WD14) or tags.txt (DeepDanbooru)."), id="models-help")
            yield FormRow("Caption (BLIP)", Input(self.models.caption_model or "", placeholder=blip,
                                                  id="caption-model"), id="row-caption-model")
            yield FormRow("Tagger", Select(TAGGERS, value=self.models.tagger, allow_blank=False,
                                           id="tagger", compact=True))
            yield FormRow("Tagger model", Input(self.models.tag_model or "", placeholder=wd14,
                                                id="tag-model"), id="row-tag-model")
            with Horizontal(id="models-buttons"):
                yield Button("Use these (enter)", id="models-ok", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="models-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#caption-model", Input).focus()

    @on(Button.Pressed, "#models-ok")
    @on(Input.Submitted)
    def accept(self) -> None:
        caption = self.query_one("#caption-model", Input).value.strip() or None
        tag = self.query_one("#tag-model", Input).value.strip() or None
        tagger = self.query_one("#tagger", Select).value
        self.dismiss(LabelModels(caption, tag, str(tagger)))

    @on(Button.Pressed, "#models-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ReplaceLabelsScreen(ModalScreen):
    """f8 / f9 over labels that exist: replace them (a copy of each is kept), label only the
    images without one, or cancel. Dismisses with "replace", "missing" or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ReplaceLabelsScreen { align: center middle; }
    #replace-dialog { width: 72; max-width: 100%; height: auto; padding: 0 1;
                      background: $panel; border: thick $warning; }
    #replace-buttons { height: auto; margin-top: 1; }
    #replace-buttons Button { margin-right: 2; }
    """

    def __init__(self, field: str, labelled: int, total: int):
        super().__init__()
        self.field, self.labelled, self.total = field, labelled, total

    def compose(self):
        what = "captions" if self.field == "caption" else "tag lists"
        from engine.data.label_backups import BACKUP_DIR_NAME

        with Vertical(id="replace-dialog"):
            yield Label(Text(f"Replace {self.labelled} existing {what}?", style="bold"))
            yield Static(Text(f"{self.labelled} of the {self.total} images already have {what}, maybe written "
                              f"by hand. Replacing keeps a copy of each in the dataset folder's "
                              f"{BACKUP_DIR_NAME}/ (its RESTORE.txt says how to put them back), and ctrl+u "
                              "undoes the run while the wizard is open."))
            with Horizontal(id="replace-buttons"):
                yield Button("Replace (keep copies)", id="replace-all", variant="warning", compact=True)
                yield Button("Only images without", id="replace-missing", compact=True)
                yield Button("Cancel (esc)", id="replace-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#replace-missing", Button).focus()  # the safe choice is the default

    @on(Button.Pressed, "#replace-all")
    def _replace(self) -> None:
        self.dismiss("replace")

    @on(Button.Pressed, "#replace-missing")
    def _missing(self) -> None:
        self.dismiss("missing")

    @on(Button.Pressed, "#replace-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

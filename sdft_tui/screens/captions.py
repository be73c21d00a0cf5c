"""Step 2: captions: a filterable table, an editor with an image preview, bulk edits and undo.

Every save goes through the engine's atomic caption writer (engine.data.captions.write_caption)
or, for a metadata-file dataset, rewrites the metadata JSON atomically. ctrl+u undoes the last
save or the last bulk edit as a whole.
"""

from __future__ import annotations

from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, TextArea

from sdft_tui.screens.wizard_base import FormRow, StepBar, WizardScreen
from sdft_tui.widgets.image_view import ImageView

BULK_OPS = (("Find / replace", "replace"), ("Add tag(s)", "add_tag"), ("Remove tag(s)", "remove_tag"),
            ("Prefix", "prefix"))


class BulkEditScreen(ModalScreen):
    """Ask for one bulk edit; dismisses with (op, a, b) or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def compose(self):
        with Vertical(id="bulk-dialog"):
            yield Label(f"Bulk edit of the {self.count} captions shown (one undo step)")
            yield FormRow("Operation", Select(BULK_OPS, value="replace", allow_blank=False, id="bulk-op", compact=True))
            yield FormRow("Text / tags", Input(id="bulk-a", compact=True))
            yield FormRow("Replace with", Input(id="bulk-b", compact=True))
            with Horizontal(id="bulk-buttons"):
                yield Button("Apply", id="bulk-apply", variant="primary", compact=True)
                yield Button("Cancel", id="bulk-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#bulk-a", Input).focus()

    @on(Button.Pressed, "#bulk-apply")
    @on(Input.Submitted)
    def apply(self) -> None:
        op = self.query_one("#bulk-op", Select).value
        self.dismiss((op, self.query_one("#bulk-a", Input).value, self.query_one("#bulk-b", Input).value))

    @on(Button.Pressed, "#bulk-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class CaptionsScreen(WizardScreen):
    STEP = "captions"
    BINDINGS = [
        Binding("ctrl+s", "save_caption", "Save caption", priority=True),
        Binding("ctrl+u", "undo", "Undo", priority=True),
        Binding("ctrl+e", "bulk_edit", "Bulk edit", priority=True),
        Binding("ctrl+f", "focus_filter", "Filter", priority=True),
    ]

    def __init__(self):
        super().__init__()
        self.shown: list[int] = []     # record indices in table order
        self.current: int | None = None

    def compose(self):
        yield StepBar(self.STEP)
        yield Input(placeholder="filter: text in caption/file, or problem:no_caption", id="filter", compact=True)
        yield DataTable(id="captions", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="editor-row"):
            yield ImageView(id="preview")
            with Vertical(id="editor-box"):
                yield Label("", id="editing")
                yield TextArea(id="editor", soft_wrap=True, compact=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#captions", DataTable)
        table.add_column("file", key="file", width=14)
        table.add_column("tags", key="tags", width=4)
        table.add_column("tok", key="tokens", width=5)
        table.add_column("problems", key="problems", width=14)
        table.add_column("caption", key="caption")
        self.refresh_view()

    # ---------------------------------------------------------------- table

    def refresh_view(self) -> None:
        state = self.state
        table = self.query_one("#captions", DataTable)
        query = self.query_one("#filter", Input).value.strip().lower()
        keep_row = self.current
        table.clear()
        self.shown = []
        limit = int(state.values.get("model.max_token_length", 75))
        for i, r in enumerate(state.records):
            problems = state.problems_of(r)
            caption = state.joined_caption(r)
            if query:
                if query.startswith("problem:"):
                    if query[8:] not in problems:
                        continue
                elif query not in caption.lower() and query not in r.path.name.lower():
                    continue
            tokens = "" if r.tokens is None else (f"{r.tokens}!" if r.tokens > limit else str(r.tokens))
            table.add_row(r.path.name, str(r.tag_count()), tokens, ",".join(problems), caption.replace("\n", " ⏎ "),
                          key=str(i))
            self.shown.append(i)
        if keep_row in self.shown:
            table.move_cursor(row=self.shown.index(keep_row), animate=False)
        self._select(self.shown[table.cursor_row] if self.shown else None)

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.refresh_view()

    @on(DataTable.RowHighlighted, "#captions")
    def _row(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self._select(int(event.row_key.value))

    def _select(self, index: int | None) -> None:
        editor = self.query_one("#editor", TextArea)
        label = self.query_one("#editing", Label)
        preview = self.query_one("#preview", ImageView)
        if index == self.current and index is not None:
            return
        self.current = index
        if index is None:
            editor.load_text("")
            label.update("no image selected")
            preview.set_image(None)
            return
        record = self.state.records[index]
        editor.load_text(record.edit_text)
        where = "metadata entry" if record.key is not None and self.state.metadata_file else \
            self.state.sidecar_path(record, record.edit_field).name
        label.update(f"{record.edit_field} of {record.path.name} → {where}  (ctrl+s saves)")
        preview.set_image(record.path)

    # ---------------------------------------------------------------- editing

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_save_caption(self) -> None:
        if self.current is None:
            return
        text = self.query_one("#editor", TextArea).text
        try:
            changed = self.state.set_text(self.current, text)
        except OSError as exc:
            self.notify(f"cannot write the caption: {exc}", severity="error")
            return
        self.notify("caption saved" if changed else "no change")
        self._after_write()

    def action_undo(self) -> None:
        snap = self.state.undo()
        if snap is None:
            self.notify("nothing to undo")
            return
        self.notify(f"restored {self.state.records[snap.index].path.name}")
        self.current = None
        self._after_write()

    def action_bulk_edit(self) -> None:
        if not self.shown:
            return

        def done(result) -> None:
            if not result:
                return
            op, a, b = result
            n = self.state.bulk_edit(list(self.shown), op, a, b)
            self.notify(f"{n} caption(s) changed (ctrl+u undoes)")
            self.current = None
            self._after_write()

        self.app.push_screen(BulkEditScreen(len(self.shown)), done)

    def _after_write(self) -> None:
        keep = self.current
        self.current = None
        self.refresh_view()
        if keep is not None and keep in self.shown:
            self._select(keep)
        self.recount()

    @work(thread=True, exclusive=True, group="tokens")
    def recount(self) -> None:
        try:
            self.state.count_tokens()
        except Exception:
            return
        self.app.call_from_thread(self.refresh_view)

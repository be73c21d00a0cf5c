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
from sdft_tui.text import literal
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
            # boxed fields (not compact): on a panel a compact one is one shade apart from it
            yield FormRow("Operation", Select(BULK_OPS, value="replace", allow_blank=False, id="bulk-op"))
            yield FormRow("Text / tags", Input(id="bulk-a"))
            yield FormRow("Replace with", Input(id="bulk-b"))
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
    AUTO_FOCUS = "#captions"  # the table: arrows pick an image at once (^f reaches the filter)
    LABEL = Binding.Group("Auto-label ")  # the space: a compact footer puts no gap after a group
    BINDINGS = [
        # ^s is named in the editor's line and ^f beside the filter: off the footer, so that the
        # bulk edits, ^q Quit and f1 (which lists every key) fit at 80 columns
        Binding("ctrl+s", "save_caption", "Save", show=False, priority=True),
        Binding("ctrl+u", "undo", "Undo", priority=True),
        Binding("ctrl+e", "bulk_edit", "Replace/tags", priority=True),  # the bulk edits
        Binding("ctrl+f", "focus_filter", "Filter", show=False, priority=True),
        # auto-labelling (section at the end of this class): one footer entry "f7 f8 f9 Auto-label";
        # the help screen and the command palette say what each key does
        Binding("f7", "auto_label('caption', 'skip')", "Caption missing", group=LABEL),
        Binding("f8", "auto_label('caption', 'overwrite')", "Caption all", group=LABEL),
        Binding("f9", "auto_label('tags', 'overwrite')", "Tag all", group=LABEL),
        Binding("ctrl+r", "recaption", "Re-caption", show=False, priority=True),  # named in the editor line
        Binding("ctrl+k", "toggle_field", "Caption/tags", show=False, priority=True),  # named there too
        Binding("ctrl+l", "label_models", "Models", show=False, priority=True),  # f1 and the palette list it
    ]

    def __init__(self):
        super().__init__()
        self.shown: list[int] = []     # record indices in table order
        self.current: int | None = None
        self.field_override: str | None = None   # ctrl+k: edit the other text of the image

    def compose(self):
        yield StepBar(self.STEP)
        yield FormRow("Filter ^f", Input(placeholder="text in caption/file, or problem:no_caption", id="filter",
                                         compact=True), id="filter-row")
        yield DataTable(id="captions", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="editor-row"):
            yield ImageView(id="preview")
            with Vertical(id="editor-box"):
                yield Label("", id="editing")
                yield TextArea(id="editor", soft_wrap=True, compact=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        table = self.query_one("#captions", DataTable)
        table.add_column("file", key="file", width=14)
        table.add_column("tags", key="tags", width=4)
        table.add_column("tok", key="tokens", width=5)
        table.add_column("problems", key="problems", width=14)
        table.add_column("caption", key="caption")
        self.refresh_view()

    # ---------------------------------------------------------------- table

    def refresh_view(self, keep: int | None = None) -> None:
        """Rebuild the table; the cursor stays on the selected image (or on ``keep``)."""
        state = self.state
        table = self.query_one("#captions", DataTable)
        query = self.query_one("#filter", Input).value.strip().lower()
        keep_row = self.current if keep is None else keep
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
            table.add_row(literal(r.path.name), str(r.tag_count()), tokens, ",".join(problems),
                          literal(caption.replace("\n", " ⏎ ")), key=str(i))
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
        self.save_pending_edit()   # moving on keeps what was typed (ctrl+u undoes it)
        self.current = index
        self.field_override = None
        if index is None:
            editor.load_text("")
            label.update("no image selected")
            preview.set_image(None)
            return
        self._load_editor(self.state.records[index])
        preview.set_image(self.state.records[index].path)

    def field_of(self, record) -> str:
        """The text the editor changes: the caption (or tags when there is no caption), or the
        other one after ctrl+k."""
        return self.field_override or record.edit_field

    def _load_editor(self, record) -> None:
        which = self.field_of(record)
        self.query_one("#editor", TextArea).load_text(getattr(record, which) or "")
        where = self.state.labels.where(record, which)
        # the keys first: a long file name may be cut at 80 columns, the keys must not
        redo = "^r re-caption" if which == "caption" else "f9 re-tag all"
        other = "tags" if which == "caption" else "caption"
        self.query_one("#editing", Label).update(
            literal(f"^s save · ^k {other} · {redo} · {which} of {record.path.name} → {where}"))

    def action_toggle_field(self) -> None:
        """Switch the editor between the image's caption and its tags."""
        if self.current is None:
            return
        record = self.state.records[self.current]
        which = self.field_of(record)
        self.save_pending_edit()
        self.field_override = "tags" if which == "caption" else "caption"
        self._load_editor(record)

    # ---------------------------------------------------------------- editing

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def pending_edit(self) -> str | None:
        """What the editor holds that is not saved yet ("the caption of a.png"), or None."""
        if self.current is None or self.current >= len(self.state.records) or not self.is_mounted:
            return None
        record = self.state.records[self.current]
        which = self.field_of(record)
        if self.query_one("#editor", TextArea).text.strip() == (getattr(record, which) or "").strip():
            return None
        return f"the {which} of {record.path.name}"

    def save_pending_edit(self) -> bool:
        """Save what the editor holds before it is left (another image, the other field, another
        step, quitting): work is never dropped, and ctrl+u undoes the save. True when it saved."""
        what = self.pending_edit()
        if what is None:
            return False
        record_index = self.current
        which = self.field_of(self.state.records[record_index])
        try:
            self.state.set_text(record_index, self.query_one("#editor", TextArea).text, which)
        except OSError as exc:
            self.notify(f"cannot write {what}: {exc}", severity="error", markup=False)
            return False
        self.notify(f"saved {what} (ctrl+u undoes)", markup=False)
        self._refresh_row(record_index)
        self.app.count_tokens()
        return True

    def _refresh_row(self, index: int) -> None:
        """The table row of one image after its text was written (the cursor stays where it is)."""
        table = self.query_one("#captions", DataTable)
        record = self.state.records[index]
        if index in self.shown:
            table.update_cell(str(index), "caption", literal(self.state.joined_caption(record).replace("\n", " ⏎ ")))
            table.update_cell(str(index), "tags", str(record.tag_count()))

    def action_save_caption(self) -> None:
        if self.current is None:
            return
        text = self.query_one("#editor", TextArea).text
        which = self.field_of(self.state.records[self.current])
        try:
            changed = self.state.set_text(self.current, text, which)
        except OSError as exc:
            self.notify(f"cannot write the caption: {exc}", severity="error")
            return
        self.notify(f"{which} saved" if changed else "no change")
        self._after_write()

    def action_undo(self) -> None:
        group = self.state.undo()   # a bulk edit or a labelling run is one step
        if not group:
            self.notify("nothing to undo")
            return
        self.notify(f"restored {self.state.records[group[0].index].path.name}" if len(group) == 1
                    else f"restored {len(group)} captions/tags")
        if len(group) == 1:
            self.current = group[0].index  # the cursor goes to the image that was restored
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
            self._after_write()

        self.app.push_screen(BulkEditScreen(len(self.shown)), done)

    def _after_write(self) -> None:
        keep = self.current
        self.current = None  # the editor reloads what was written
        self.refresh_view(keep=keep)
        self.app.count_tokens()  # token counts in the background; the table refreshes when done

    # ---------------------------------------------------------------- auto-labelling (engine.labeling)
    # f7 caption missing, f8 caption all, f9 tag all: one engine job in a worker thread with a
    # progress bar mounted while it runs (pressing one of the keys again stops it after the
    # batch); the records are re-read afterwards and the run is one ctrl+u undo step.
    # ctrl+r puts a fresh BLIP caption of the selected image in the editor (ctrl+s saves it).
    # Models: ctrl+l (LabelModelsScreen), preset by SDFT_CAPTION_MODEL / SDFT_TAG_MODEL; a model
    # that cannot be loaded (offline hub id, wrong folder) reopens that dialog with the message.

    label_stop = False

    def _label_options(self, kind: str, policy: str):
        from engine.labeling import CaptionOptions, TagOptions

        state = self.state
        models = state.label_models
        out = dict(policy=policy, **state.labels.labelling_destination())
        if kind == "caption":
            extra = {"model": models.caption_model} if models.caption_model else {}
            return CaptionOptions(caption_extension=state.get("data.caption_extension"), **extra, **out)
        return TagOptions(tagger=models.tagger, model=models.tag_model, tags_extension=state.get("data.tags_extension"), **out)

    def action_label_models(self, error: str | None = None) -> None:
        from sdft_tui.screens.label_models import LabelModelsScreen

        def done(models) -> None:
            if models is None:
                return
            if models != self.state.label_models:
                self.state.label_models = models
                captioner = getattr(self, "_captioner", None)
                if captioner is not None:  # ctrl+r loads the new model next time
                    captioner.close()
                    self._captioner = None
            self.notify("labeling models set: f7/f8 caption, f9 tags, ctrl+r re-captions")

        self.app.push_screen(LabelModelsScreen(self.state.label_models, error), done)

    def _label_failed(self, message: str) -> None:
        """A model that cannot be used: show why where the model is chosen."""
        self.app.clear_notifications()  # toasts would sit on top of the dialog that explains it
        self.action_label_models(message)

    def action_auto_label(self, kind: str, policy: str) -> None:
        if any(w.group == "labeling" and w.is_running for w in self.workers):
            self.label_stop = True
            self.notify("stopping after the current batch")
            return
        records = [r for r in self.state.records if r.error is None]
        if not records:
            self.notify("no readable images to label", severity="warning")
            return
        field = "caption" if kind == "caption" else "tags"
        labelled = sum(1 for r in records if (getattr(r, field) or "").strip())
        if policy == "overwrite" and labelled:
            # replacing labels someone may have written by hand: ask first
            from sdft_tui.screens.label_models import ReplaceLabelsScreen

            def answer(choice: str | None) -> None:
                if choice is not None:
                    self._start_labelling(kind, "overwrite" if choice == "replace" else "skip", records)

            self.app.push_screen(ReplaceLabelsScreen(field, labelled, len(records)), answer)
            return
        self._start_labelling(kind, policy, records)

    def _start_labelling(self, kind: str, policy: str, records: list) -> None:
        field = "caption" if kind == "caption" else "tags"
        if policy == "skip":
            missing = sum(1 for r in records if not getattr(r, field))
            if not missing:
                key = "f8 captions" if kind == "caption" else "f9 tags"
                self.notify(f"every image has {'a caption' if kind == 'caption' else 'tags'}: "
                            f"{key} all of them again", severity="warning")
                return
            what = f"{missing} image(s) without {'a caption' if kind == 'caption' else 'tags'}"
        else:
            what = f"all {len(records)} image(s)"
        self.notify(f"{'captioning' if kind == 'caption' else 'tagging'} {what}; press the key again to stop")
        from textual.widgets import ProgressBar

        self.label_stop = False
        bar = ProgressBar(total=len(records), id="label-progress", show_eta=False)
        self.mount(bar, before=self.query_one("#captions"))
        self._label_job(kind, policy, records)

    @work(thread=True, exclusive=True, group="labeling")
    def _label_job(self, kind: str, policy: str, records: list) -> None:
        from engine.labeling import LabelError, caption_images, tag_images

        field = "caption" if kind == "caption" else "tags"
        position = {id(r): i for i, r in enumerate(self.state.records)}
        before = self.state.labels.snapshot([position[id(r)] for r in records], field)
        run = caption_images if kind == "caption" else tag_images

        def progress(p) -> None:
            self.app.call_from_thread(self._label_progress, p)

        try:
            summary = run([r.path for r in records], self._label_options(kind, policy), progress=progress,
                          should_stop=lambda: self.label_stop)
        except LabelError as exc:  # the model cannot be loaded: the dialog shows why
            self.app.call_from_thread(self._label_done, None, None, field, before)
            self.app.call_from_thread(self._label_failed, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - shown, never kills the wizard
            self.app.call_from_thread(self._label_done, None, f"{type(exc).__name__}: {exc}", field, before)
            return
        self.app.call_from_thread(self._label_done, summary, None, field, before)

    def _label_progress(self, p) -> None:
        from textual.widgets import ProgressBar

        for bar in self.query("#label-progress").results(ProgressBar):
            bar.update(total=max(1, p.total + p.skipped), progress=p.skipped + p.done + p.failed)

    def _label_done(self, summary, error: str | None, field: str, before: dict) -> None:
        for bar in self.query("#label-progress"):
            bar.remove()
        self.state.labels.reload_after(before, field)   # what the engine wrote; one undo step
        if error:
            self.notify(error, severity="error", timeout=10)
        elif summary is not None:
            text = f"{summary.done} done, {summary.skipped} skipped, {len(summary.failed)} failed"
            if summary.done:
                text += f", {summary.images_per_s:.2f} images/s on {summary.device}"
            for folder in summary.backups:
                text += f"; the labels replaced are kept in {folder} (its RESTORE.txt says how to put them back)"
            self.notify(("stopped: " if summary.stopped else "") + text + " (ctrl+u undoes)", markup=False,
                        severity="warning" if summary.failed or summary.stopped else "information",
                        timeout=15 if summary.backups else None)
        self._after_write()

    def action_recaption(self) -> None:
        if self.current is None:
            return
        record = self.state.records[self.current]
        if record.edit_field != "caption":
            self.notify(f"{record.path.name} is edited as tags here; use f9 to re-tag", severity="warning")
            return
        self.notify(f"captioning {record.path.name}...")
        self._recaption_job(self.current, record.path)

    @work(thread=True, exclusive=True, group="labeling")
    def _recaption_job(self, index: int, path) -> None:
        from engine.labeling import LabelError, label_one, load_captioner

        try:
            model = getattr(self, "_captioner", None)
            if model is None:
                model = self._captioner = load_captioner(self._label_options("caption", "overwrite"))
            text = label_one(path, model)
        except LabelError as exc:
            self.app.call_from_thread(self._label_failed, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - LabelError or a model failure: shown to the user
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
            return
        self.app.call_from_thread(self._recaption_done, index, text)

    def _recaption_done(self, index: int, text: str) -> None:
        if self.current != index:
            self.notify("new caption ready, but another image is selected now", severity="warning")
            return
        record = self.state.records[index]
        self.field_override = None if record.edit_field == "caption" else "caption"
        self._load_editor(record)            # a new caption goes to the caption, whatever was shown
        self.query_one("#editor", TextArea).load_text(text)
        self.notify("new caption in the editor: ctrl+s saves it (so does moving on; ctrl+u undoes)")

    def on_unmount(self) -> None:
        model = getattr(self, "_captioner", None)
        if model is not None:
            model.close()


"""Step 3: aspect-ratio buckets, recomputed live from the engine's own bucket code."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Checkbox, Footer, Input, Static

from engine.project.run_draft import field_meta
from sdft_tui.screens.wizard_base import FormRow, StepBar, StepProblems, WizardScreen
from sdft_tui.widgets.bucket_histogram import BucketHistogram
from sdft_tui.widgets.on_off import OnOffCheckbox

FIELDS = (  # (value key, label); each tooltip is the engine's help for the key
    ("dataset.resolution", "Resolution"),
    ("dataset.min_bucket_reso", "Min bucket side"),
    ("dataset.max_bucket_reso", "Max bucket side"),
    ("dataset.bucket_reso_steps", "Bucket step"),
    ("dataset.batch_size", "Batch size"),
    ("subset.num_repeats", "Repeats"),
)
RESOLUTION_TEXT = "Here: 512, or WxH such as 640x448."


def _tooltip(key: str) -> str:
    doc = field_meta(key).get("doc", "")
    return f"{doc} {RESOLUTION_TEXT}" if key == "dataset.resolution" else doc


def parse_resolution(text: str):
    """'512' -> 512, '640x448' / '640,448' -> [640, 448]; ValueError when it is neither shape
    (the values themselves are the engine's to judge)."""
    t = text.lower().replace(" ", "").replace(",", "x")
    if "x" in t:
        w, h = t.split("x", 1)
        w, h = int(w), int(h)
        return w if w == h else [w, h]
    return int(t)


def format_resolution(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{value[0]}x{value[1]}"
    return str(value)


class BucketsScreen(WizardScreen):
    STEP = "buckets"
    AUTO_FOCUS = "#f-dataset-resolution"

    def compose(self):
        yield StepBar(self.STEP)
        with Horizontal(id="buckets-body"):
            with Vertical(id="bucket-form"):
                for key, label in FIELDS:
                    yield FormRow(label, Input(id=_wid(key), compact=True), tooltip=_tooltip(key))
                yield OnOffCheckbox("Bucketing", id="enable_bucket", compact=True)
                yield OnOffCheckbox("No upscale", id="no_upscale", compact=True)
            with Vertical(id="bucket-view"):
                yield BucketHistogram(id="histogram")
                yield StepProblems()
                yield Static(id="bucket-stats")
                with VerticalScroll(id="bucket-details"):
                    yield Static(id="bucket-list")
        yield Footer()

    def on_mount(self) -> None:
        self._load_fields()
        self.refresh_view()

    def on_screen_resume(self) -> None:
        self._load_fields()
        super().on_screen_resume()

    def _load_fields(self) -> None:
        v = self.state.values
        for key, label in FIELDS:
            widget = self.query_one("#" + _wid(key), Input)
            self.accept(widget, label, _tooltip(key))
            text = format_resolution(v[key]) if key == "dataset.resolution" else str(v[key])
            if widget.value != text:
                with widget.prevent(Input.Changed):
                    widget.value = text
        for wid, key in (("enable_bucket", "dataset.enable_bucket"), ("no_upscale", "dataset.bucket_no_upscale")):
            box = self.query_one("#" + wid, Checkbox)
            with box.prevent(Checkbox.Changed):
                box.value = bool(v[key])

    @on(Input.Changed)
    def _field_changed(self, event: Input.Changed) -> None:
        key, label = next(((k, lab) for k, lab in FIELDS if _wid(k) == event.input.id), (None, None))
        if key is None:
            return
        try:
            value = parse_resolution(event.value) if key == "dataset.resolution" else int(event.value)
        except ValueError:
            self.reject(event.input, label, "write 512, or WxH such as 640x448" if key == "dataset.resolution"
                        else f"write a whole number, e.g. {self.state.get(key)}")
            self.refresh_view()
            return
        problem = self.state.value_problem(key, value)
        if problem:
            self.reject(event.input, label, problem)
            self.refresh_view()
            return
        self.accept(event.input, label, _tooltip(key))
        self.state.set_by_user(key, value)
        self.refresh_view()

    @on(Checkbox.Changed)
    def _box_changed(self, event: Checkbox.Changed) -> None:
        key = {"enable_bucket": "dataset.enable_bucket", "no_upscale": "dataset.bucket_no_upscale"}[event.checkbox.id]
        self.state.set_by_user(key, event.value)
        self.refresh_view()

    def refresh_view(self) -> None:
        self.show_step_problems(field_label, field_id)
        histogram = self.query_one("#histogram", BucketHistogram)
        stats = self.query_one("#bucket-stats", Static)
        details = self.query_one("#bucket-list", Static)
        if self.rejected:   # the preview would show the old value: say what is wrong instead
            histogram.show(None, error=self.unfinished_edit())
            stats.update("")
            details.update("")
            return
        if not self.state.index.usable():
            histogram.show(None)
            stats.update("")
            details.update("")
            return
        try:
            report, assignments, records = self.state.bucket_report()
        except Exception as exc:  # e.g. max bucket side below the resolution
            histogram.show(None, error=str(exc))
            stats.update("")
            details.update("")
            return
        histogram.show(report)
        from engine.data.buckets import single_bucket_from_min_side, steps_per_epoch

        accum = int(self.state.get("train.gradient_accumulation_steps") or 1)
        text = Text()
        text.append(f"{len(report.rows)} buckets, {report.total_batches} batches/epoch, "
                    f"{steps_per_epoch(report.total_batches, accum)} steps/epoch; ")
        text.append(f"partial batches: {report.partial_batches}", style="yellow" if report.partial_batches else "")
        text.append(f"; mean aspect error {report.mean_ar_error:.3f}")
        single = single_bucket_from_min_side([r.size for r in records], self.state.draft.bucket_settings())
        if single is not None:
            text.append(f"\n{single.message}", style="bold yellow")
        stats.update(text)
        lines = Text()
        upscaled = [(i, row.bucket) for row in report.rows for i in row.upscaled]
        if upscaled:
            lines.append(f"Upscaled ({len(upscaled)}):\n", style="bold magenta")
            for i, bucket in upscaled[:100]:
                a = assignments[i]
                lines.append(f"  {records[i].path.name}  {a.size[0]}x{a.size[1]} → {bucket[0]}x{bucket[1]} "
                             f"(×{a.upscale:.2f})\n")
        partial = [row for row in report.rows if row.partial]
        if partial:
            lines.append("Partial last batches:\n", style="bold yellow")
            for row in partial:
                lines.append(f"  {row.bucket[0]}x{row.bucket[1]}: {row.partial} of {report.batch_size}\n")
        if report.rejected:
            lines.append(f"Rejected ({len(report.rejected)}):\n", style="bold red")
            for i, why in report.rejected[:50]:
                lines.append(f"  {records[i].path.name}: {why}\n")
        details.update(lines)


def _wid(key: str) -> str:
    return "f-" + key.replace(".", "-")


def _field_of(key: str) -> tuple[str, str] | None:
    """This step's (key, label) for a problem's key (``datasets[0].batch_size``: the batch size)."""
    name = key.rsplit(".", 1)[-1]
    return next(((k, label) for k, label in FIELDS if k.split(".", 1)[1] == name), None)


def field_label(key: str) -> str:
    found = _field_of(key)
    return found[1] if found else key


def field_id(key: str) -> str | None:
    found = _field_of(key)
    return _wid(found[0]) if found else None

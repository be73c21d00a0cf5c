"""Step 1: choose the dataset (folder, kohya metadata JSON or dataset/run TOML), scan it, show its health."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Checkbox, DirectoryTree, Footer, Input, Label, ProgressBar, Select, Static

from engine.data.health import KIND_LABELS
from engine.project.records import PROBLEM_KINDS
from engine.project.sources import OPENABLE_SUFFIXES
from sdft_tui.screens.wizard_base import FormRow, StepBar, StepProblems, WizardScreen
from sdft_tui.widgets.health_list import HealthList, short_path
from sdft_tui.widgets.on_off import OnOffCheckbox

# What a .txt sidecar holds (WizardSession.SIDECAR_MODES sets the run's data.*_extension keys)
SIDECAR_CHOICES = (("tags; captions: .caption", "tags"), ("captions; tags: .tags", "captions"))


# The switch's words say what "on" means (a box beside "beside the run file" that is off read as
# "not beside the run file", the opposite of what happens); the summary says where it goes now.
METADATA_SWITCH = "in the image folder"


def _metadata_place(beside_images: bool) -> str:
    return "in the image folder" if beside_images else "beside the run file"


class DatasetTree(DirectoryTree):
    """Folders plus the files the wizard can open (metadata JSON, TOML); hidden entries left out."""

    def filter_paths(self, paths):
        return [p for p in paths if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() in OPENABLE_SUFFIXES)]


class DatasetScreen(WizardScreen):
    STEP = "dataset"
    BINDINGS = [
        Binding("ctrl+o", "focus_path", "Path", priority=True),
        Binding("ctrl+r", "rescan", "Rescan", priority=True),
    ]

    def compose(self):
        yield StepBar(self.STEP)
        with Horizontal(id="dataset-body"):
            yield DatasetTree(str(self.app.start_dir), id="tree")
            with Vertical(id="dataset-right"):
                yield Label("Image folder, metadata .json or .toml (enter scans):")
                yield FormRow("Path (^o)", Input(placeholder="/path/to/images", id="path", compact=True))
                yield FormRow(".txt sidecars", Select(self._sidecar_choices(), value=self.state.draft.sidecar_mode,
                                                      allow_blank=False, id="sidecar-mode", compact=True),
                              tooltip="What a .txt file beside an image holds; sets the run's "
                                      "data.caption_extension and data.tags_extension (and rescans).")
                yield FormRow("Metadata JSON", OnOffCheckbox(METADATA_SWITCH,
                                                             self.state.project.metadata_beside_images,
                                                             id="metadata-beside", compact=True),
                              tooltip="Where saving writes the folder's metadata JSON: beside the run file "
                                      "(your image folder is left as it is) or in the image folder.",
                              id="metadata-row")
                yield ProgressBar(id="progress", show_eta=False)
                yield Static(id="summary")
                yield StepProblems()
                yield HealthList(id="health", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        source = self.state.index.source or self.state.index.image_dir
        if source is not None:
            self.query_one("#path", Input).value = str(source)
        # The bar shows only while a scan or check runs (idle, an empty bar animates forever).
        self.query_one("#progress", ProgressBar).display = False
        self.refresh_view()
        self.query_one("#path", Input).focus()
        if self.state.records and self.state.health_report is None:
            # Opened on a run TOML: the records are loaded, the engine's full check has not run.
            self.health_worker()

    # ---------------------------------------------------------------- actions

    def action_focus_path(self) -> None:
        self.query_one("#path", Input).focus()

    def action_rescan(self) -> None:
        value = self.query_one("#path", Input).value.strip()
        if value:
            self.start_scan(value)

    def _sidecar_choices(self):
        if self.state.draft.sidecar_mode != "custom":
            return SIDECAR_CHOICES
        custom = f"{self.state.get('data.caption_extension')} captions, {self.state.get('data.tags_extension')} tags"
        return SIDECAR_CHOICES + ((custom, "custom"),)

    @on(Select.Changed, "#sidecar-mode")
    def _sidecar_mode_changed(self, event: Select.Changed) -> None:
        if event.value in (Select.BLANK, "custom") or event.value == self.state.draft.sidecar_mode:
            return
        self.state.set_sidecar_mode(str(event.value))
        what = "captions" if event.value == "captions" else "tags"
        if self.state.records and self.state.index.metadata_file is None and self.state.index.image_dir is not None:
            self.notify(f".txt sidecars are read as {what} now: scanning again")
            self.start_scan(str(self.state.index.source or self.state.index.image_dir))
        else:
            self.notify(f".txt sidecars are {what} from now on (labeling and sdft prepare use this)")
            self.refresh_view()

    @on(Checkbox.Changed, "#metadata-beside")
    def _metadata_place_changed(self, event: Checkbox.Changed) -> None:
        self.state.project.metadata_beside_images = event.value
        self.refresh_view()

    def on_directory_tree_directory_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#path", Input).value = str(event.path)

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#path", Input).value = str(event.path)
        self.start_scan(str(event.path))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "path" and event.value.strip():
            self.start_scan(event.value.strip())

    def start_scan(self, path: str) -> None:
        self.query_one("#summary", Static).update(Text(f"scanning {path} …", style="italic"))
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.scan_worker(path)

    @work(thread=True, exclusive=True, group="scan")
    def scan_worker(self, path: str) -> None:
        def progress(done: int, total: int) -> None:
            self.app.call_from_thread(self._progress, done, total)

        try:
            self.state.load_source(path, progress)
            self.app.call_from_thread(self.refresh_view)
            if self.state.records:
                try:
                    self.state.count_tokens()
                except Exception as exc:  # no tokenizer available: token columns stay empty
                    self.app.call_from_thread(self.notify, f"token counts unavailable: {exc}", severity="warning")
                self.app.call_from_thread(self.refresh_view)
                self._check_health()
        finally:
            self.app.call_from_thread(self._scan_done)

    @work(thread=True, exclusive=True, group="scan")
    def health_worker(self) -> None:
        """The engine's full health check for records loaded without a scan (``sdft RUN.toml``)."""
        try:
            self._check_health()
        finally:
            self.app.call_from_thread(self._scan_done)

    def _check_health(self) -> None:
        try:
            self.state.run_health_check()
        except Exception as exc:  # the quick checks stay on screen
            self.app.call_from_thread(self.notify, f"health check failed: {exc}", severity="warning")
        self.app.call_from_thread(self.refresh_view)

    def _scan_done(self) -> None:
        self.query_one("#progress", ProgressBar).display = False

    def _progress(self, done: int, total: int) -> None:
        self.query_one("#progress", ProgressBar).update(total=max(total, 1), progress=done if total else 1)

    # ---------------------------------------------------------------- view

    def refresh_view(self) -> None:
        if not self.is_mounted:
            return  # a worker finished before the screen (and its Select's parts) mounted: on_mount shows it
        self.show_step_problems()
        state = self.state
        summary = self.query_one("#summary", Static)
        health = self.query_one("#health", HealthList)
        # the metadata JSON's place matters only when saving writes one (a folder dataset)
        self.query_one("#metadata-row").display = state.index.metadata_file is None and not state.index.folder_subsets
        mode = self.query_one("#sidecar-mode", Select)
        if mode.value != state.draft.sidecar_mode:  # a run file opened or scanned sets the extensions
            with mode.prevent(Select.Changed):
                mode.set_options(self._sidecar_choices())
                mode.value = state.draft.sidecar_mode
        if state.scan_error:
            summary.update(Text(state.scan_error, style="bold red"))
            health.display = False
            return
        empty = state.no_images_reason()
        if not state.records:
            summary.update(Text(empty, style="bold yellow") if empty else
                           Text("No dataset yet: pick a folder on the left or type a path.", style="dim"))
            health.display = False
            return
        health.display = True
        usable = len(state.index.usable())
        with_caption = sum(1 for r in state.records if r.caption is not None or r.tags is not None)
        counted = [r.tokens for r in state.records if r.tokens is not None]
        where = state.index.metadata_file or (state.index.source if state.index.folder_subsets else state.index.image_dir)
        text = Text()
        text.append(f"{len(state.records)} images", style="bold")
        text.append(f" ({usable} usable), {with_caption} captioned")
        if counted and max(counted):
            text.append(f", longest {max(counted)} tokens")
        text.append(f"\nfrom {where}", style="dim")
        if state.index.folder_subsets:
            count = len(state.index.folder_subsets)
            text.append(f"\n{count} folder subset{'s' if count > 1 else ''} (kohya's DreamBooth method): captions "
                        "from each image's caption file, else the folder's class tokens; no metadata file",
                        style="dim")
        elif state.index.metadata_file is None:
            for line in state.project.sidecar_lines():
                text.append(f"\n{line}", style="dim")
            text.append(f"\nsaving writes the metadata JSON {_metadata_place(state.project.metadata_beside_images)}",
                        style="dim")
        summary.update(text)
        findings = {kind: (KIND_LABELS.get(kind) or PROBLEM_KINDS.get(kind) or kind,
                           [(short_path(path, state.index.image_dir), message) for path, message in files])
                    for kind, files in state.health().items()}
        health.show(findings, note="checking every image …" if state.health_report is None and findings else None)

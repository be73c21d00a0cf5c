"""Step 1: choose the dataset (folder, kohya metadata JSON or dataset/run TOML), scan it, show its health."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DirectoryTree, Footer, Input, Label, ProgressBar, Static, Tree

from sdft_tui.screens.wizard_base import StepBar, WizardScreen
from sdft_tui.state import HEALTH_LABELS, PROBLEM_KINDS

ACCEPTED_FILES = (".json", ".jsonl", ".toml")


class DatasetTree(DirectoryTree):
    """Folders plus the files the wizard can open (metadata JSON, TOML); hidden entries left out."""

    def filter_paths(self, paths):
        return [p for p in paths if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() in ACCEPTED_FILES)]


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
                yield Input(placeholder="/path/to/images", id="path", compact=True)
                yield ProgressBar(id="progress", show_eta=False)
                yield Static(id="summary")
                yield Tree("Health", id="health")
                yield Static(id="health-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#health", Tree).show_root = False
        source = self.state.source or self.state.image_dir
        if source is not None:
            self.query_one("#path", Input).value = str(source)
        # The bar shows only while a scan or check runs (idle, an empty bar animates forever).
        self.query_one("#progress", ProgressBar).display = False
        self.query_one("#health-detail", Static).display = False
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

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        """A problem line is cut at 80 columns: the highlighted one is shown in full below the tree."""
        if event.control.id != "health":
            return
        detail = self.query_one("#health-detail", Static)
        data = event.node.data
        detail.update(Text.assemble((f"{data[0]}\n", "bold"), data[1]) if data else "")
        detail.display = bool(data)

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
        state = self.state
        summary = self.query_one("#summary", Static)
        tree = self.query_one("#health", Tree)
        tree.clear()
        self.query_one("#health-detail", Static).display = False
        if state.scan_error:
            summary.update(Text(state.scan_error, style="bold red"))
            return
        if not state.records:
            summary.update(Text("No dataset yet: pick a folder on the left or type a path.", style="dim"))
            return
        usable = len(state.usable_records())
        with_caption = sum(1 for r in state.records if r.caption is not None or r.tags is not None)
        counted = [r.tokens for r in state.records if r.tokens is not None]
        where = state.metadata_file or state.image_dir
        text = Text()
        text.append(f"{len(state.records)} images", style="bold")
        text.append(f" ({usable} usable), {with_caption} captioned")
        if counted and max(counted):
            text.append(f", longest {max(counted)} tokens")
        text.append(f"\nfrom {where}", style="dim")
        summary.update(text)
        health = state.health()
        if not health:
            tree.root.add_leaf(Text("no problems found", style="green"))
            return
        if state.health_report is None:
            tree.root.add_leaf(Text("checking every image …", style="italic dim"))
        for kind, files in health.items():
            label = HEALTH_LABELS.get(kind) or PROBLEM_KINDS.get(kind) or kind
            node = tree.root.add(Text.assemble((f"{len(files):>4} ", "bold"), label), expand=len(files) <= 3)
            for path, message in files[:200]:
                node.add_leaf(Text.assemble(_short(path, state.image_dir), (f"  {message}", "dim")),
                              data=(_short(path, state.image_dir), message))
            if len(files) > 200:
                node.add_leaf(f"… and {len(files) - 200} more")


def _short(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)

"""The dataset step's health findings: one heading per kind, its files below, each line wrapped to
the pane's width (a tree cuts every line at its edge, and at 80 columns most lines are longer)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

MAX_FILES = 200  # per kind; the rest are counted


class HealthList(OptionList):
    """Enter on a heading folds or unfolds its files; kinds with up to 3 files start unfolded."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.findings: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        self.unfolded: set[str] = set()
        self._note: str | None = None

    def show(self, findings: dict[str, tuple[str, list[tuple[str, str]]]], note: str | None = None) -> None:
        """``findings``: kind -> (label, [(file, message)]); ``note`` is a line shown first."""
        self.unfolded = {k for k, (_label, files) in findings.items()
                         if len(files) <= 3 or (k in self.unfolded and k in self.findings)}
        self.findings = findings
        self._note = note
        self._rebuild()

    def _rebuild(self, keep: str | None = None) -> None:
        self.clear_options()
        if self._note:
            self.add_option(Option(Text(self._note, style="italic dim"), disabled=True))
        if not self.findings:
            self.add_option(Option(Text("no problems found", style="green"), disabled=True))
            return
        for kind, (label, files) in self.findings.items():
            mark = "▼" if kind in self.unfolded else "▶"
            self.add_option(Option(Text.assemble(f"{mark} ", (f"{len(files):>4} ", "bold"), label), id=f"kind:{kind}"))
            if kind not in self.unfolded:
                continue
            for n, (name, message) in enumerate(files[:MAX_FILES]):
                self.add_option(Option(Text.assemble("    ", name, (f"  {message}", "dim")), id=f"file:{kind}:{n}"))
            if len(files) > MAX_FILES:
                self.add_option(Option(f"    … and {len(files) - MAX_FILES} more", disabled=True))
        if keep is not None:
            try:
                self.highlighted = self.get_option_index(keep)
            except Exception:  # noqa: BLE001 - the option is gone: leave the highlight where it is
                pass

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        option_id = event.option.id or ""
        if not option_id.startswith("kind:"):
            return
        event.stop()
        kind = option_id[5:]
        self.unfolded ^= {kind}
        self._rebuild(keep=option_id)


def short_path(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)

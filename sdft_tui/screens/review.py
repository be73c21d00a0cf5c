"""Step 5: the run TOML as it will be written, the engine's validation, save / train / quit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rich.syntax import Syntax
from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Input, Static

from sdft_tui.screens.wizard_base import FormRow, StepBar, WizardScreen


class ReviewScreen(WizardScreen):
    STEP = "review"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+t", "train", "Save+train", priority=True),
        Binding("ctrl+x", "save_quit", "Save+quit", priority=True),
        # the last step has no next one: keeping it off the footer leaves room for f1 Help at 80x24
        Binding("ctrl+n", "app.next_step", "Next", show=False, priority=True),
    ]

    def compose(self):
        yield StepBar(self.STEP)
        yield FormRow("Save as", Input(id="save-path", compact=True))
        yield Static(id="problems")
        with VerticalScroll(id="toml-view"):
            yield Static(id="toml")
        with Horizontal(id="review-buttons"):
            yield Button("Save", id="save", compact=True)
            yield Button("Save + train", id="train", variant="primary", compact=True)
            yield Button("Save + quit", id="save-quit", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#save-path", Input).value = str(self.state.default_run_path())
        self.refresh_view()

    def run_path(self) -> Path:
        text = self.query_one("#save-path", Input).value.strip()
        return Path(text).expanduser() if text else self.state.default_run_path()

    @on(Input.Changed, "#save-path")
    def _path_changed(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        path = self.run_path()
        toml_text = self.state.render_toml(path)
        self.query_one("#toml", Static).update(
            Syntax(toml_text, "toml", theme="ansi_dark", line_numbers=True, word_wrap=False))
        problems = self.state.validate(path)
        box = self.query_one("#problems", Static)
        if not problems:
            box.update(Text("✓ the engine accepts this file", style="green"))
            return
        text = Text()
        for p in problems[:6]:
            style = "red" if p.severity == "error" else "yellow"
            line = f" (line {p.line})" if p.line else ""
            text.append(f"{p.severity}: {p.key}{line}: {p.message}", style=style)
            if p.hint:
                text.append(f" — {p.hint}", style="dim")
            text.append("\n")
        if len(problems) > 6:
            text.append(f"… and {len(problems) - 6} more\n")
        box.update(text)

    def _errors(self, path: Path) -> list:
        return [p for p in self.state.validate(path) if p.severity == "error"]

    def action_save(self) -> Path | None:
        path = self.run_path()
        try:
            saved = self.state.save(path)
        except Exception as exc:
            self.notify(f"cannot save {path}: {exc}", severity="error")
            return None
        errors = self._errors(saved)
        self.refresh_view()
        if errors:
            self.notify(f"saved {saved.name}, but it has {len(errors)} problem(s) to fix before training",
                        severity="warning")
        else:
            self.notify(f"saved {saved}")
        return saved

    def action_train(self) -> None:
        saved = self.action_save()
        if saved is None:
            return
        if self._errors(saved):
            self.notify("fix the problems above before training", severity="error")
            return
        if importlib.util.find_spec("sdft_tui.dashboard") is not None:
            from sdft_tui import dashboard

            opener = getattr(dashboard, "open_run_screen", None)
            if opener is not None:
                opener(self.app, saved)
                return
        self.app.finish(saved, f"Run it with:\n  sdft train {saved}")

    def action_save_quit(self) -> None:
        saved = self.action_save()
        if saved is not None:
            self.app.finish(saved, f"Saved {saved}\nTrain headless with:\n  sdft train {saved}")

    @on(Button.Pressed, "#save")
    def _b_save(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#train")
    def _b_train(self) -> None:
        self.action_train()

    @on(Button.Pressed, "#save-quit")
    def _b_quit(self) -> None:
        self.action_save_quit()

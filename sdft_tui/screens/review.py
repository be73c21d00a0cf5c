"""Step 5: the run TOML as it will be written, the engine's validation, save / train / quit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Static

from engine.project.project import free_run_path
from sdft_tui.screens.confirm import ChoiceScreen
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
        yield Footer(compact=True, show_command_palette=False)   # f1 names ^p: "f1 All keys" fits

    def on_mount(self) -> None:
        self.query_one("#save-path", Input).value = str(self.state.project.default_run_path())
        self.refresh_view()

    def run_path(self) -> Path:
        text = self.query_one("#save-path", Input).value.strip()
        return Path(text).expanduser() if text else self.state.project.default_run_path()

    @on(Input.Changed, "#save-path")
    def _path_changed(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        path = self.run_path()
        toml_text = self.state.render_toml(path)
        self.query_one("#toml", Static).update(
            Syntax(toml_text, "toml", theme="ansi_dark", line_numbers=True, word_wrap=True))   # nothing cut at 80 columns
        self._show_problems(self.state.validate(path, toml_text), pending=True)   # the schema's verdict, at once
        self._want_check()

    # The full check loads the model and builds the optimizer: seconds, in a thread that cannot be
    # interrupted. A path typed key by key would start one per key, all running to the end, so at
    # most one runs; what changed meanwhile is checked once when it ends.
    _check_running = False
    _changes = 0   # refresh_view calls so far: a check that saw fewer is out of date

    def _want_check(self) -> None:
        self._changes += 1
        if not self._check_running:
            self._start_check()

    def _start_check(self) -> None:
        self._check_running = True
        self.full_check_worker(self._changes, self.run_path())

    @work(thread=True, group="review-check")
    def full_check_worker(self, changes: int, path: Path) -> None:
        """The engine's whole check (what `sdft train --check` runs), off the UI thread."""
        try:
            problems = self.state.full_check(path)
        except Exception as exc:  # noqa: BLE001 - a broken check must not take the wizard down
            self.app.call_from_thread(self._check_ended, changes, None)
            self.app.call_from_thread(self.notify, f"the full check failed: {exc}", severity="warning",
                                      markup=False)
            return
        self.app.call_from_thread(self._check_ended, changes, problems)

    def _check_ended(self, changes: int, problems: list | None) -> None:
        """On the UI thread, while the worker still runs (so a test's settle waits for the next)."""
        self._check_running = False
        if changes != self._changes:
            self._start_check()   # the file changed while it ran: check what is there now
        elif problems is not None:
            self._show_problems(problems, pending=False)

    def _show_problems(self, problems: list, *, pending: bool) -> None:
        box = self.query_one("#problems", Static)
        serious = [p for p in problems if p.severity in ("error", "warning")]
        notes = [p for p in problems if p.severity not in ("error", "warning")]
        text = Text()
        if not serious and not pending:
            text.append("✓ sdft train --check accepts this file\n", style="green")
        for p in serious[:6]:
            line = f" (line {p.line})" if p.line else ""
            text.append(f"{p.severity}: {p.key}{line}: {p.message}", style="red" if p.severity == "error" else "yellow")
            if p.hint:
                text.append(f" — {p.hint}", style="dim")
            text.append("\n")
        if len(serious) > 6:
            text.append(f"… and {len(serious) - 6} more\n")
        for p in notes[:1] if not serious else ():
            # what the check found (the model's kind), without its how-to-override part
            text.append(p.message.split(";")[0] + "\n", style="dim")
        if pending:
            text.append("checking the model, images, prompts and optimizer …", style="italic")
        box.update(text)

    # ---------------------------------------------------------------- saving

    def _save_then(self, after) -> None:
        """Save, asking first when that would replace a file this session did not open; then
        ``after(saved_path)``."""
        path = self.run_path()
        if not self.state.draft.would_replace(path):
            self._save_to(path, after)
            return
        free = free_run_path(path)

        def answered(choice: str | None) -> None:
            if choice == "replace":
                self._save_to(path, after)
            elif choice == "rename":
                with self.prevent(Input.Changed):
                    self.query_one("#save-path", Input).value = str(free)
                self._save_to(free, after)
            else:
                self.notify("not saved", markup=False)

        self.app.push_screen(ReplaceFileScreen(path, free), answered)

    def _save_to(self, path: Path, after) -> None:
        try:
            saved = self.state.save(path)
        except Exception as exc:  # noqa: BLE001 - a full disk or a read-only folder: say so, keep the session
            self.notify(f"cannot save {path}: {exc}", severity="error", markup=False)
            return
        self.refresh_view()
        after(saved)

    def action_save(self) -> None:
        self._save_then(self._saved)

    def _saved(self, saved: Path) -> None:
        errors = [p for p in self.state.validate(saved) if p.severity == "error"]
        if errors:
            self.notify(f"saved {saved.name}, but it has {len(errors)} problem(s) to fix before training",
                        severity="warning", markup=False)
        else:
            self.notify(f"saved {saved}", markup=False)

    def action_train(self) -> None:
        self._save_then(self._check_then_train)

    def _check_then_train(self, saved: Path) -> None:
        self._saved(saved)
        self.notify("checking the run file before training …", markup=False)
        self.train_check_worker(saved)

    @work(thread=True, exclusive=True, group="train-check")
    def train_check_worker(self, saved: Path) -> None:
        from engine.preflight.checks import check_run_file
        from engine.run_history import run_history

        config, problems = check_run_file(saved, restart=None)   # an earlier run: asked below
        errors = [p for p in problems if p.severity == "error"]
        history = run_history(config.run_dir()) if config is not None else None
        self.app.call_from_thread(self._train_if_clean, saved, errors, history)

    def _train_if_clean(self, saved: Path, errors: list, history=None) -> None:
        if errors:
            self._show_problems(errors, pending=False)
            self.notify(f"fix the {len(errors)} problem(s) above before training", severity="error", markup=False)
            return
        if history is None:
            self._open_run(saved)
            return
        self.app.push_screen(EarlierRunScreen(history), lambda answer: self._answered_earlier(saved, answer))

    def _answered_earlier(self, saved: Path, answer: str | None) -> None:
        if answer == "resume":
            self._open_run(saved, resume="latest")
        elif answer == "restart":
            self._open_run(saved, restart=True)
        else:
            self.notify("not started: the earlier run is untouched", markup=False)

    def _open_run(self, saved: Path, **start) -> None:
        if self.state.gpus > 1:   # several processes run from the terminal; the dashboard trains in this one
            self.app.finish(saved, f"Train on {self.state.gpus} GPUs with:\n  {train_command(saved, self.state.gpus)}\n"
                                   "and follow (and steer) it from another terminal with `sdft watch RUN_DIR`")
            return
        if importlib.util.find_spec("sdft_tui.dashboard") is not None:
            from sdft_tui import dashboard

            opener = getattr(dashboard, "open_run_screen", None)
            if opener is not None:
                opener(self.app, saved, **start)
                return
        self.app.finish(saved, f"Run it with:\n  {train_command(saved)}")

    def action_save_quit(self) -> None:
        self._save_then(lambda saved: self.app.finish(saved, f"Saved {saved}\nTrain headless with:\n"
                                                             f"  {train_command(saved, self.state.gpus)}"))

    @on(Button.Pressed, "#save")
    def _b_save(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#train")
    def _b_train(self) -> None:
        self.action_train()

    @on(Button.Pressed, "#save-quit")
    def _b_quit(self) -> None:
        self.action_save_quit()


def train_command(saved: Path, gpus: int = 1) -> str:
    """The command that trains ``saved`` from here: with --resume latest when its run folder
    holds a state (a plain start would be refused), with --restart when it holds only events;
    with --gpus N for several GPUs."""
    command = train_command_alone(saved)
    return command.replace(f"sdft train {saved}", f"sdft train {saved} --gpus {gpus}", 1) if gpus > 1 else command


def train_command_alone(saved: Path) -> str:
    from engine.config.run_toml import load_run_config
    from engine.run_history import run_history

    try:
        history = run_history(load_run_config(saved).run_dir())
    except Exception:  # noqa: BLE001 - an unreadable file: the plain command reports it
        history = None
    if history is None:
        return f"sdft train {saved}"
    if history.states:
        return f"sdft train {saved} --resume latest   (or --restart to start over)"
    return f"sdft train {saved} --restart   (the earlier run is kept in its earlier/ folder)"


class EarlierRunScreen(ChoiceScreen):
    """Train was pressed on a run file whose folder holds an earlier run: resume it, start
    over (keeping it in earlier/), or cancel; the same question ``sdft train`` asks."""

    def __init__(self, history) -> None:
        newest = history.newest_state
        answers = [("restart", "Start over (esc: cancel)")]
        if newest is not None:
            answers.insert(0, ("resume", f"Resume at step {newest[0]}"))
        super().__init__(f"{history.describe()}.\nResume it, or start over at step 0? Starting over keeps the "
                         f"earlier run in {history.run_dir / 'earlier'}/.", answers)


class ReplaceFileScreen(ModalScreen):
    """Saving over a run file this session did not open: replace it, save under a free name,
    or cancel. Dismisses with "replace", "rename" or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ReplaceFileScreen { align: center middle; }
    #replace-file-dialog { width: 72; max-width: 100%; height: auto; padding: 0 1;
                           background: $panel; border: thick $warning; }
    #replace-file-buttons { height: auto; margin-top: 1; }
    #replace-file-buttons Button { margin-right: 2; }
    """

    def __init__(self, path: Path, free: Path):
        super().__init__()
        self.path, self.free = path, free

    def compose(self):
        with Vertical(id="replace-file-dialog"):
            yield Label(Text(f"{self.path.name} already exists", style="bold"))
            yield Static(Text(f"{self.path} was not opened in this session: saving would replace it. "
                              f"Save as {self.free.name} instead, or replace it?"))
            with Horizontal(id="replace-file-buttons"):
                yield Button(Text(f"Save as {self.free.name}"), id="rename", variant="primary", compact=True)
                yield Button("Replace it", id="replace", variant="warning", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#rename", Button).focus()   # the choice that loses nothing

    @on(Button.Pressed, "#rename")
    def _rename(self) -> None:
        self.dismiss("rename")

    @on(Button.Pressed, "#replace")
    def _replace(self) -> None:
        self.dismiss("replace")

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

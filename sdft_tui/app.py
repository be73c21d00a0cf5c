"""The sdft wizard: a Textual app that turns a folder of images into a run TOML.

``run_wizard(None)`` opens it on a new run, ``run_wizard(path)`` on an existing run file. Start-up
imports no torch/diffusers/transformers: the GPU is probed with nvidia-smi in a thread and the
tokenizer is loaded in a worker after a scan.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding

from sdft_tui.screens.buckets import BucketsScreen
from sdft_tui.screens.captions import CaptionsScreen
from sdft_tui.screens.confirm import ChoiceScreen
from sdft_tui.screens.dataset import DatasetScreen
from sdft_tui.screens.help import HelpScreen
from sdft_tui.screens.options import OptionsScreen
from sdft_tui.screens.review import ReviewScreen, train_command
from sdft_tui.screens.wizard_base import STEPS, step_bindings, step_key
from sdft_tui.session import WizardSession
from sdft_tui.text import PlainNotifications

STEP_NAMES = [step.name for step in STEPS]


class SdftApp(PlainNotifications, App):
    """The wizard. ``hardware`` (an engine.hardware.HardwareInfo) skips the probe (tests, demos);
    ``step`` opens it on that step (a name of STEP_NAMES) instead of Dataset, as its step key would
    once the dataset is loaded: a test that looks at one step starts there."""

    CSS_PATH = "styles/wizard.tcss"
    TITLE = "sdft"
    SCREENS = {screen.STEP: screen for screen in (DatasetScreen, CaptionsScreen, BucketsScreen, OptionsScreen,
                                                  ReviewScreen)}
    BINDINGS = [
        # the footer cannot hold every key at 80 columns: F1 lists them all, and says so here
        Binding("f1", "help", "All keys"),
        *step_bindings(),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, run_toml: Path | str | None = None, *, demo: bool = False, hardware=None,
                 start_dir: Path | str | None = None, state: WizardSession | None = None,
                 step: str = STEP_NAMES[0]):
        super().__init__()
        if step not in STEP_NAMES:
            raise ValueError(f"no wizard step {step!r}: one of {', '.join(STEP_NAMES)}")
        self.first_step = step
        self.state = state or WizardSession()
        self.demo = demo
        self.run_toml = Path(run_toml) if run_toml else None
        self.start_dir = Path(start_dir) if start_dir else Path.cwd()
        self.exit_message: str | None = None
        self.saved_path: Path | None = None
        self.last_run = None   # the dashboard of the last run trained here (set by open_run_screen)
        if hardware is not None:
            self.state.hardware = hardware
        if demo:
            self.title = "sdft (demo)"

    # ---------------------------------------------------------------- start

    def on_mount(self) -> None:
        if self.run_toml is not None:
            self.state.load_source(self.run_toml)
            if self.state.scan_error:
                self.notify(self.state.scan_error, severity="error", timeout=10)
            if self.run_toml.parent.is_dir():
                self.start_dir = self.state.index.image_dir or self.run_toml.parent
        # the later steps work on the images: without any, Dataset says why (as action_goto does)
        self.push_screen(STEP_NAMES[0] if self.state.no_images_reason() else self.first_step)
        if self.demo:
            self.notify("The demo run: generated pictures and a tiny model. Look around, then "
                        f"{step_key('review')} (Review) "
                        "and Ctrl+T trains it in about a minute on a CPU.", title="sdft demo", timeout=20)
        if self.state.hardware is None:
            self.probe_hardware()
        if self.state.records:
            self.count_tokens()

    @work(thread=True, exclusive=True, group="hardware")
    def probe_hardware(self) -> None:
        from engine.hardware import probe_hardware

        info = probe_hardware()
        self.call_from_thread(self._hardware_ready, info)

    def _hardware_ready(self, info) -> None:
        from engine.plan import preset_for

        self.state.hardware = info
        gpu = info.best_gpu
        if gpu is not None and self.state.draft.document is None and self.state.preset_applied is None:
            size = preset_for(gpu.total_bytes, self.state.family)
            replaced = self.state.apply_preset(size)
            self.notify(f"{gpu.name}: starting from the {size} GB preset" + "".join(f"\n{n}" for n in replaced),
                        markup=False)
        self._refresh_current()

    @work(thread=True, exclusive=True, group="tokens")
    def count_tokens(self) -> None:
        try:
            self.state.count_tokens()
        except Exception:
            return
        self.call_from_thread(self._refresh_current)

    def _refresh_current(self) -> None:
        screen = self.screen
        # a worker can finish while the next step is still composing; its on_mount shows the state
        if hasattr(screen, "refresh_view") and screen.is_mounted:
            screen.refresh_view()

    # ---------------------------------------------------------------- navigation

    def current_step(self) -> str | None:
        for name in STEP_NAMES:
            if self.is_screen_installed(name) and self.get_screen(name) is self.screen:
                return name
        return None

    def training_screen(self):
        """The dashboard when it is showing (it owns quitting while a run is active)."""
        return self.screen if hasattr(self.screen, "action_quit_dashboard") else None

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Over the dashboard, the wizard's help and its ^q leave the footer: the dashboard shows its
        own q Quit, and its ctrl+q binding (RunScreen) takes the key, asking before it stops a run."""
        if action in ("help", "quit") and self.training_screen() is not None:
            return False
        return True

    async def action_quit(self) -> None:
        dashboard = self.training_screen()
        if dashboard is not None:
            dashboard.action_quit_dashboard()  # asks, stops cleanly, waits for the save
            return
        unsaved = self.unsaved_work()
        if not unsaved:
            self.exit()
            return
        if isinstance(self.screen, ChoiceScreen):
            return   # a question is open: answer it first
        self.push_screen(ChoiceScreen(f"Unsaved: {' and '.join(unsaved)}. Save before quitting?",
                                      [("save", "Save and quit"), ("discard", "Quit without saving"),
                                       ("cancel", "Cancel (esc)")]), self._quit_answered)

    def unsaved_work(self) -> list[str]:
        """What quitting now would lose: an edit in the caption editor, options not in the run file."""
        out = []
        captions = self._captions_screen()
        if captions is not None and captions.pending_edit():
            out.append(captions.pending_edit())
        if self.state.run_file_unsaved():
            out.append("changes to the run file")
        return out

    def _captions_screen(self):
        try:
            screen = self.get_screen("captions")
        except KeyError:
            return None
        return screen if screen.is_mounted else None

    def _quit_answered(self, answer: str | None) -> None:
        if answer == "discard":
            self.exit()
        elif answer == "save":
            captions = self._captions_screen()
            if captions is not None:
                captions.save_pending_edit()
            if not self.state.run_file_unsaved():
                self.exit()
                return
            try:
                saved = self.state.save()
            except Exception as exc:  # noqa: BLE001 - a full disk or a read-only folder: stay, say why
                self.notify(f"cannot save the run file: {exc}", severity="error", markup=False)
                return
            self.finish(saved, f"Saved {saved}\nTrain headless with:\n  {train_command(saved)}")

    def action_goto(self, name: str) -> None:
        if name not in STEP_NAMES or self.current_step() == name or self.training_screen() is not None:
            return
        empty = self.state.no_images_reason()
        if empty and STEP_NAMES.index(name) > 0:   # the later steps would work on nothing
            self.notify(empty, severity="warning", markup=False)
            return
        unfinished = getattr(self.screen, "unfinished_edit", lambda: None)()
        if unfinished:   # leaving would drop what the user typed there without a word
            self.notify(unfinished, severity="warning", markup=False)
            return
        getattr(self.screen, "save_pending_edit", lambda: False)()   # the caption being edited is kept
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
        self.switch_screen(name)

    def action_next_step(self) -> None:
        step = self.current_step()
        if step is not None and step != STEP_NAMES[-1]:
            self.action_goto(STEP_NAMES[STEP_NAMES.index(step) + 1])

    def action_prev_step(self) -> None:
        step = self.current_step()
        if step is not None and step != STEP_NAMES[0]:
            self.action_goto(STEP_NAMES[STEP_NAMES.index(step) - 1])

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def finish(self, saved: Path | None, message: str | None) -> None:
        """Leave the app; ``run_wizard`` prints ``message`` once the terminal is restored."""
        self.saved_path = saved
        self.exit_message = message
        self.exit(0)

    # ---------------------------------------------------------------- command palette

    def get_system_commands(self, screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, step in enumerate(STEPS):
            yield SystemCommand(f"Go to {step.label}", f"Step {i + 1} ({step.key.upper()})",
                                lambda n=step.name: self.action_goto(n))
        yield SystemCommand("Help", "Keys and what each step does (F1)", self.action_help)
        from engine.plan import presets_for

        for size in presets_for(self.state.family):
            yield SystemCommand(f"Preset: {size} GB card", "Memory settings that fit this card size",
                                lambda s=size: self._preset(s))
        if isinstance(screen, ReviewScreen):
            yield SystemCommand("Save run file", "Write the TOML (ctrl+s)", screen.action_save)
            yield SystemCommand("Save and quit", "Write the TOML and print the headless command",
                                screen.action_save_quit)
        if isinstance(screen, CaptionsScreen):
            yield SystemCommand("Bulk edit captions", "Find/replace, add/remove tag, prefix (ctrl+e)",
                                screen.action_bulk_edit)
            yield SystemCommand("Undo caption edit", "Restore the last saved caption(s) (ctrl+u)", screen.action_undo)
            yield SystemCommand("Caption missing images", "BLIP writes a caption where there is none (f7)",
                                lambda: screen.action_auto_label("caption", "skip"))
            yield SystemCommand("Caption all images", "BLIP captions every image again (f8)",
                                lambda: screen.action_auto_label("caption", "overwrite"))
            yield SystemCommand("Tag all images", "WD14/DeepDanbooru tags every image (f9)",
                                lambda: screen.action_auto_label("tags", "overwrite"))
            yield SystemCommand("Edit caption / tags", "Switch the editor between the caption and the tags (ctrl+k)",
                                screen.action_toggle_field)
            yield SystemCommand("Re-caption the selected image", "A fresh BLIP caption in the editor (ctrl+r)",
                                screen.action_recaption)
            yield SystemCommand("Labeling models", "Local model folders or hub ids for BLIP and the tagger (ctrl+l)",
                                screen.action_label_models)

    def _preset(self, size: int) -> None:
        self.action_goto("options")
        self.call_after_refresh(lambda: self.get_screen("options").apply_preset(size))


def run_wizard(run_toml: Path | str | None, *, demo: bool = False) -> int:
    """Open the wizard (on ``run_toml`` when given); returns the process exit code."""
    from sdft_tui.widgets.graphics import prepare_graphics

    prepare_graphics()  # before the app starts: Kitty/Sixel measure the terminal first
    app = SdftApp(run_toml, demo=demo)
    code = app.run()
    print_exit_report(app)
    return int(code or app.return_code or 0)


def print_exit_report(app: SdftApp) -> None:
    """What the user needs once the terminal is back: the saved file's command, where the model of
    a run trained in the wizard went (or how to resume it), and for the demo how to train it."""
    from sdft_tui.dashboard import report_last_run

    if app.exit_message:
        print(app.exit_message)
    outcome = report_last_run(app.last_run)   # waits for a run stopped by the quit to save
    if outcome:
        print(outcome)
    elif app.demo and app.run_toml is not None and not app.exit_message:
        print(f"sdft demo: not trained yet. The demo run is {app.run_toml}; train it with:\n"
              f"  sdft train {app.run_toml}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_wizard(sys.argv[1] if len(sys.argv) > 1 else None))

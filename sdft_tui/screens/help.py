"""Help: the keys and what each step does (F1 or the command palette)."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from sdft_tui.screens.wizard_base import step_keys_row

HELP = """\
# sdft wizard

Five steps turn a folder of images into a run file (`sdft train FILE` replays it headless).

| key | does |
|---|---|
| **ctrl+n / ctrl+b** | next / previous step |
{step_keys_row}
| **ctrl+p** | command palette (every action, presets) |
| **tab / shift+tab** | move between fields |
| **F1** | this help (escape closes) |
| **ctrl+q** | quit (asks first when something is not saved) |

1. **Dataset**: pick a folder (tree or typed path, enter scans). A kohya metadata `.json`/`.jsonl`
   or a dataset/run `.toml` works too. The health check lists problems by kind with their files.
2. **Captions**: the table shows each image's caption (caption + tags as training joins them),
   tag and token counts against `max_token_length`, problems. Type in the filter
   (`problem:too_long` filters by kind). Edit the selected caption below the table and save it
   with **ctrl+s** (atomic write; moving to another image or step saves it too, and **ctrl+u**
   undoes that); **ctrl+k** switches the editor between the caption and the
   tags of an image that has both; **ctrl+u** undoes the last save or bulk edit; **ctrl+e** opens
   bulk edits (find/replace, add/remove a tag, prefix) on the rows shown.
   Auto-labeling: **F7** captions the images without a caption (BLIP), **F8** captions all of
   them, **F9** tags all of them (WD14 or DeepDanbooru); press the key again to stop; **ctrl+u**
   undoes the whole run. **ctrl+r** puts a fresh caption of the selected image in the editor.
   **ctrl+l** picks the models: a local folder or a hub id (offline, download the model elsewhere
   and type its folder there).
3. **Buckets**: the histogram of aspect buckets, recomputed as you type (kohya's rules, the same
   code training uses). Yellow bars end in a partial batch; ↑n counts upscaled images.
4. **Options**: model, length, learning rate, precision, memory. The VRAM line estimates peak GPU
   memory; when it does not fit, pick a suggestion (enter applies it). Presets per card size.
   Sampling every N steps asks for a sample prompt (a caption of the dataset to start with), or
   the name of a prompts file. Problems with a step's fields show on that step.
5. **Review**: the file as it will be written, problems found by the engine's validator.
   **ctrl+s** saves (comments of an existing file are kept), **ctrl+t** saves and starts training,
   **ctrl+x** saves and quits printing the headless command.
"""


def step_keys(app, screen) -> str:
    """A Markdown table of every key the step answers, the footer's and the ones it has no room
    for (F1 is "All keys" in the footer), in the order the step declares them."""
    rows, seen = [], set()
    owners = [screen, app] if screen is not None else [app]
    bindings = [b for owner in owners for group in owner._bindings.key_to_bindings.values() for b in group]
    for binding in bindings:
        shown = app.get_key_display(binding)
        if not binding.description or shown in seen or binding.key.startswith("super+"):
            continue   # super+ keys repeat a ctrl+ key for macOS terminals
        seen.add(shown)
        rows.append(f"- **{shown}** {binding.description}")
    if not rows:
        return ""
    if "^p" not in seen:
        rows.append("- **^p** command palette (every action, presets)")
    # A list, not a table: one line per key, so a step's keys fit on an 80x24 screen
    return "## Keys on this step\n\n" + "\n".join(rows) + "\n\n"


class HelpScreen(ModalScreen):
    """``step``: the wizard step F1 was pressed on; its keys are listed first."""

    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def __init__(self, step=None):
        super().__init__()
        self.step = step

    def compose(self):
        with VerticalScroll(id="help-body"):
            yield Markdown(step_keys(self.app, self.step) + HELP.format(step_keys_row=step_keys_row()))

    def action_dismiss(self) -> None:
        self.dismiss()

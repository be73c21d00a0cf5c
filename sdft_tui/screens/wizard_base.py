"""What every wizard step shares: the step bar and the navigation keys."""

from __future__ import annotations

from typing import NamedTuple

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Label, Static


class Step(NamedTuple):
    name: str    # the screen's name (SdftApp.SCREENS) and its STEP
    label: str   # the step bar's word
    key: str     # the key that opens it from any step


# The wizard's steps in order, with their keys: the step bar, next/back, the F-key bindings, the
# help's key table and the command palette all follow this one list (F1 is help).
STEPS = (Step("dataset", "Dataset", "f2"), Step("captions", "Captions", "f3"), Step("buckets", "Buckets", "f4"),
         Step("options", "Options", "f5"), Step("review", "Review", "f6"))


def step_key(name: str) -> str:
    """The key that opens step ``name``, as the footer and messages write it ("F4")."""
    return next(step.key for step in STEPS if step.name == name).upper()


def step_bindings() -> list[Binding]:
    """One binding per step: its key opens it (not in the footer: the step bar names the steps)."""
    return [Binding(step.key, f"goto({step.name!r})", step.label, show=False) for step in STEPS]


def step_keys_row() -> str:
    """The help table's row for the step keys: "F2 … F6 | jump to Dataset, ..., Review"."""
    keys = f"{STEPS[0].key.upper()} … {STEPS[-1].key.upper()}"
    return f"| **{keys}** | jump to {', '.join(step.label for step in STEPS)} |"


class StepBar(Static):
    """`sdft  1 Dataset › 2 Captions › ...` with the current step highlighted (each step's key jumps there)."""

    def __init__(self, current: str):
        super().__init__(id="stepbar")
        self.current = current

    def render(self):
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" sdft ", style="bold reverse")
        for i, step in enumerate(STEPS):
            text.append("  " if i == 0 else " › ")
            text.append(f"{i + 1} {step.label}", style="bold reverse" if step.name == self.current else "dim")
        return text


class StepProblems(Static):
    """The problems the engine finds in fields of this step (``WizardSession.step_problems``), one
    line each with the field's label: the user fixes them here, not only on Review. Hidden when
    there are none."""

    DEFAULT_CSS = "StepProblems { height: auto; max-height: 4; padding: 0 1; }"

    def __init__(self) -> None:
        super().__init__(id="step-problems")

    def show(self, problems: list, label_of=lambda key: key) -> None:
        text = Text()
        for p in problems[:3]:
            if text:
                text.append("\n")
            text.append(f"{p.severity}: {label_of(p.key)}: {p.message}",
                        style="bold red" if p.severity == "error" else "yellow")
            if p.hint:
                text.append(f" — {p.hint}", style="dim")
        if len(problems) > 3:
            text.append(f"\n… and {len(problems) - 3} more ({step_key('review')} Review lists them all)")
        self.update(text)
        self.display = bool(problems)


class FormRow(Horizontal):
    """One line: a fixed-width label, then the field (compact widgets keep a form to one row each)."""

    DEFAULT_CSS = """
    FormRow { height: auto; min-height: 1; }
    FormRow > Label.form-label { width: 22; padding: 0 1 0 0; }
    /* the field takes the rest of the row: a wider one would run past the screen edge */
    FormRow > Input, FormRow > Select { width: 1fr; }
    """

    def __init__(self, label: str, field: Widget, *, tooltip: str | None = None, id: str | None = None):
        super().__init__(id=id)
        self._label = label
        self._field = field
        self._tooltip = tooltip

    def compose(self):
        label = Label(self._label, classes="form-label")
        if self._tooltip:
            label.tooltip = self._tooltip
            self._field.tooltip = self._tooltip
        yield label
        yield self._field

    @property
    def field(self) -> Widget:
        return self._field

    # The label shows where the focus is (wizard.tcss styles .row-focus). Set here, not by CSS
    # :focus-within, which Textual does not re-apply to a sibling of the focused field.
    def on_descendant_focus(self) -> None:
        self.query_one("Label.form-label").add_class("row-focus")

    def on_descendant_blur(self) -> None:
        self.query_one("Label.form-label").remove_class("row-focus")


class WizardScreen(Screen):
    """A wizard step: ``refresh_view`` runs whenever the step is shown again."""

    STEP = ""
    BINDINGS = [
        Binding("ctrl+n", "app.next_step", "Next", priority=True),
        Binding("ctrl+b", "app.prev_step", "Back", priority=True),
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rejected: dict[str, str] = {}   # field label -> why the text typed there was not taken

    @property
    def state(self):
        return self.app.state

    def reject(self, field: Widget, label: str, why: str) -> None:
        """The text in ``field`` is not a value the run can take: mark it; the step cannot be left."""
        field.add_class("invalid")
        field.tooltip = f"{label}: {why}"
        self.rejected[label] = why

    def accept(self, field: Widget, label: str, tooltip: str | None = None) -> None:
        field.remove_class("invalid")
        field.tooltip = tooltip
        self.rejected.pop(label, None)

    def unfinished_edit(self) -> str | None:
        """Why this step cannot be left yet (a field holds text the run file did not take), or None."""
        if not self.rejected:
            return None
        label, why = next(iter(self.rejected.items()))
        return f"{label}: {why}. Fix it, or type the old value back, before leaving this step."

    def on_screen_resume(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:  # pragma: no cover - overridden
        pass

    def show_step_problems(self, label_of=lambda key: key, field_id=lambda key: None) -> None:
        """Show the engine's problems with this step's fields in its StepProblems line, and mark
        the label of each field named (``field_id``: a key's widget id, None when it has none)."""
        problems = self.state.step_problems(self.STEP)
        for box in self.query(StepProblems):
            box.show(problems, label_of)
        marked = {field_id(p.key) for p in problems} - {None}
        for row in self.query(FormRow):
            row.query_one("Label.form-label").set_class(row.field.id in marked, "has-problem")

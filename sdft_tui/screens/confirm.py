"""A yes/no question as a modal screen (stop the run? quit?)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question answered with y/n (or Enter/Escape): no mouse needed."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; max-width: 95%; height: auto; border: thick $warning; background: $panel; padding: 1 2;
    }
    ConfirmScreen Label { width: 100%; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align: center middle; }
    ConfirmScreen Button { margin: 0 1; min-width: 12; }
    """

    def __init__(self, question: str, yes: str = "Yes (y)", no: str = "No (n)") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button(self.yes, variant="warning", id="yes")
                yield Button(self.no, id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ChoiceScreen(ModalScreen[str | None]):
    """A question with a few answers, one button each; dismisses with the chosen answer's id,
    or None on Escape. The text is shown as written (paths and captions are never markup)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ChoiceScreen { align: center middle; }
    ChoiceScreen > Vertical {
        width: 72; max-width: 95%; height: auto; border: thick $warning; background: $panel; padding: 1 2;
    }
    ChoiceScreen Label { width: 100%; margin-bottom: 1; }
    ChoiceScreen Vertical Horizontal { height: auto; }
    ChoiceScreen Button { margin: 0 1 0 0; }
    """

    def __init__(self, question: str, answers: list[tuple[str, str]], keys: dict[str, str] | None = None) -> None:
        super().__init__()
        self.question, self.answers = question, answers   # answers: (id, button label), first is the default
        self.keys = keys or {}                             # key -> answer id, e.g. {"y": "stop"}

    def compose(self) -> ComposeResult:
        from rich.text import Text

        with Vertical():
            yield Label(Text(self.question))
            with Horizontal():
                for number, (answer, label) in enumerate(self.answers):
                    yield Button(Text(label), id=f"answer-{answer}", compact=True,
                                 variant="primary" if number == 0 else "default")

    def on_mount(self) -> None:
        self.query(Button).first().focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_key(self, event) -> None:
        if event.key in self.keys:
            event.stop()
            self.dismiss(self.keys[event.key])

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss((event.button.id or "").removeprefix("answer-") or None)

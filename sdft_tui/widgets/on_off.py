"""A checkbox whose box is empty when off: Textual's draws an X either way and tells the states apart
by colour only, which a 16-colour or monochrome terminal (or a colour-blind user) cannot see."""

from __future__ import annotations

from textual.widgets import Checkbox


class OnOffCheckbox(Checkbox):
    """``▐X▌`` when on, ``▐ ▌`` when off."""

    @property
    def BUTTON_INNER(self) -> str:  # noqa: N802 - Textual reads this class attribute when drawing
        return "X" if self.value else " "

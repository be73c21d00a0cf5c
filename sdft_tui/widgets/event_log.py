"""Event log: saves, samples, warnings and status changes, newest at the bottom.

It mirrors ``RunFigures.log``: ``sync`` writes only the lines it has not written yet, so the
screen can call it on every repaint tick for free.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from sdft_tui.run_figures import RunFigures

LEVEL_STYLES = {"info": "", "warning": "bold yellow", "error": "bold red", "success": "green"}


class EventLog(RichLog):
    DEFAULT_CSS = """
    EventLog { height: 1fr; background: $surface; scrollbar-size-vertical: 1; }
    """

    def __init__(self, figures: RunFigures, **kwargs) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, max_lines=5000, auto_scroll=True,
                         min_width=16, **kwargs)
        self.figures = figures
        self.written = 0

    def sync(self) -> None:
        lines = self.figures.log
        for line in lines[self.written:]:
            text = Text(line.render(), style=LEVEL_STYLES.get(line.level, ""))
            self.write(text)
        self.written = len(lines)

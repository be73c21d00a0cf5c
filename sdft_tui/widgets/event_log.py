"""Event log: saves, samples, warnings and status changes, newest at the bottom.

It mirrors ``RunFigures.log``: ``sync`` writes only the lines it has not written yet, so the
screen can call it on every repaint tick for free. A long line wraps under its text, not under
its time stamp, so each event still starts at a visible ``+mm:ss``.
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text
from textual.widgets import RichLog

from sdft_tui.run_figures import RunFigures, format_offset

LEVEL_STYLES = {"info": "", "warning": "bold yellow", "error": "bold red", "success": "green"}
MIN_BODY = 12  # narrower than this, a hanging indent wastes more than it helps


class HangingLine:
    """``prefix`` then ``body``; the body's wrapped lines are indented by the prefix's width."""

    def __init__(self, prefix: str, body: str, style: str = "") -> None:
        self.prefix = Text(prefix, style=style)
        self.body = Text(body, style=style)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        full = self.prefix.cell_len + self.body.cell_len
        return Measurement(min(full, self.prefix.cell_len + MIN_BODY), full)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        indent = self.prefix.cell_len
        width = options.max_width
        if width - indent < MIN_BODY:
            yield self.prefix + self.body
            return
        for i, line in enumerate(self.body.wrap(console, width - indent)):
            lead = self.prefix.copy() if i == 0 else Text(" " * indent)
            line.rstrip()
            yield Text.assemble(lead, line, no_wrap=True, end="\n")


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
            style = LEVEL_STYLES.get(line.level, "")
            self.write(HangingLine(format_offset(line.offset_s) + " ", line.text, style))
        self.written = len(lines)

"""Bucket histogram: one bar per bucket (resolution, items with repeats, batches, partial batch).

Fed with the engine's ``engine.data.buckets.BucketReport`` so the picture always matches what
training will do; the widget only draws.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class BucketHistogram(Widget):
    DEFAULT_CSS = """
    BucketHistogram { height: auto; min-height: 3; width: 1fr; }
    """

    def __init__(self, *, name=None, id=None, classes=None):
        super().__init__(name=name, id=id, classes=classes)
        self._report = None
        self._error: str | None = None

    def show(self, report=None, error: str | None = None) -> None:
        self._report, self._error = report, error
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        if self._error:   # a long message wraps: room for all of it
            return max(2, -(-len(self._error) // max(1, width)))
        if self._report is None:
            return 2
        return max(2, len(self._report.rows) + 1)

    def render(self):
        if self._error:
            return Text(self._error, style="bold red")
        report = self._report
        if report is None or not report.rows:
            return Text("no images to bucket yet (scan a dataset first)", style="dim")
        width = max(20, self.size.width or 60)
        label_w = max(len(f"{r.bucket[0]}x{r.bucket[1]}") for r in report.rows)
        tail_w = 30
        bar_w = max(4, width - label_w - tail_w - 3)
        top = max(r.items for r in report.rows) or 1
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{'bucket':>{label_w}}  {'images':<{bar_w}}  items batches  last\n", style="bold")
        for i, row in enumerate(report.rows):
            n = max(1, round(bar_w * row.items / top))
            label = f"{row.bucket[0]}x{row.bucket[1]}"
            text.append(f"{label:>{label_w}} ", style="bold")
            text.append("█" * n, style="green" if not row.partial else "yellow")
            text.append(" " * (bar_w - n + 1))
            last = f"{row.partial}/{report.batch_size}" if row.partial else "full"
            text.append(f"{row.items:>6} {row.batches:>7}  {last:<6}")
            if row.upscaled:
                text.append(f" ↑{len(row.upscaled)}", style="magenta")
            if i < len(report.rows) - 1:
                text.append("\n")
        return text

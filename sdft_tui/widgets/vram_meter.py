"""Memory meter: GPU memory allocated, reserved and peak against the card's total, or RAM on a CPU.

Allocated is what tensors use; reserved is what PyTorch's caching allocator holds (what
nvidia-smi shows); peak is the high-water mark of allocated since the run started: the figure
that decides an out-of-memory error.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from sdft_tui.run_figures import RunFigures, format_bytes

LABEL_WIDTH = 9


def bar(fraction: float | None, width: int, fill: str = "█", empty: str = "░") -> str:
    """A text progress bar ``width`` cells wide; eighth blocks give finer steps."""
    if width <= 0:
        return ""
    if fraction is None:
        return empty * width
    fraction = min(1.0, max(0.0, fraction))
    eighths = int(round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    partial = "▏▎▍▌▋▊▉"[part - 1] if part and full < width else ""
    return (fill * full + partial + empty * width)[:width]


class VramMeter(Widget):
    COMPONENT_CLASSES = {"vram-meter--bar", "vram-meter--peak", "vram-meter--label", "vram-meter--high"}
    DEFAULT_CSS = """
    VramMeter { height: auto; min-height: 3; text-wrap: nowrap; text-overflow: clip; }
    VramMeter > .vram-meter--bar { color: $primary; }
    VramMeter > .vram-meter--peak { color: $warning; }
    VramMeter > .vram-meter--high { color: $error; }
    VramMeter > .vram-meter--label { color: $text-muted; }
    """

    def __init__(self, figures: RunFigures, **kwargs) -> None:
        super().__init__(**kwargs)
        self.figures = figures

    def get_content_height(self, container, viewport, width: int) -> int:
        return 4

    def render(self) -> Text:
        m = self.figures.last
        label_style = self.get_component_rich_style("vram-meter--label")
        text = Text(no_wrap=True, overflow="crop")
        width = self.size.width
        if m is None:
            device = self.figures.started.device if self.figures.started else "-"
            text.append(f"{'device':<{LABEL_WIDTH}}{device}\nno figures yet", style=label_style)
            return text
        device = self.figures.started.device if self.figures.started else "-"
        if m.vram_total or m.vram_allocated is not None:
            total = m.vram_total
            # peak first: it decides an out-of-memory error, and it is what a short pane must keep
            rows = [("peak", m.vram_peak), ("alloc", m.vram_allocated), ("reserved", m.vram_reserved)]
            figures = [format_bytes(value) for _, value in rows]
            figure_w = max(8, *(len(figure) for figure in figures))
            bar_w = width - LABEL_WIDTH - figure_w - 1
            for (name, value), figure in zip(rows, figures, strict=True):
                frac = (value / total) if (total and value is not None) else None
                style = "vram-meter--peak" if name == "peak" else "vram-meter--bar"
                if frac is not None and frac > 0.95:
                    style = "vram-meter--high"
                text.append(f"{name:<{LABEL_WIDTH}}", style=label_style)
                if bar_w >= 3:   # the bar goes before the figure is cut
                    text.append(bar(frac, bar_w) + " ", style=self.get_component_rich_style(style))
                text.append(f"{figure:>{figure_w}}\n", style=label_style)
            text.append(f"{'total':<{LABEL_WIDTH}}{self._total(format_bytes(total), device, width)}", style=label_style)
            return text
        ram_total = getattr(m, "ram_total", None)
        used = format_bytes(m.ram_used)
        figure = used + (f" / {format_bytes(ram_total)}" if ram_total else "")
        text.append(f"{'RAM':<{LABEL_WIDTH}}", style=label_style)
        bar_w = width - LABEL_WIDTH - len(figure) - 1
        if ram_total and bar_w >= 3:   # too narrow (80 columns): the figure alone, never cut
            text.append(bar(m.ram_used / ram_total if m.ram_used else 0.0, bar_w),
                        style=self.get_component_rich_style("vram-meter--bar"))
            text.append(" ")
        text.append(figure, style=label_style)
        text.append(f"\n{'device':<{LABEL_WIDTH}}{device}\n(no GPU: system RAM shown)", style=label_style)
        return text

    def _total(self, figure: str, device: str, width: int) -> str:
        """The card's memory and where: the longest wording that fits, the figure alone at worst."""
        started = self.figures.started
        if started is not None and started.processes > 1:
            wordings = [f"{figure} per GPU ({device} of {started.processes})", f"{figure} per GPU"]
        else:
            wordings = [f"{figure} on {device}"]
        return next((w for w in wordings if LABEL_WIDTH + len(w) <= width), figure)

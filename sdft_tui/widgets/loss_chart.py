"""Loss chart: raw loss as a noise band, its smoothed trend as a line, and the learning rate.

Drawn with braille characters (2x4 dots per cell) in the terminal's own palette, so it reads at
80x24 without true colour or a mouse. The plotting is a pure function of lists of numbers
(``plot_braille``); the widget only picks the window and the styles.

Keys (bound on the run screen): ``l`` toggles a log scale, ``w`` switches between the recent
window (scrolls as the run goes) and the whole run.
"""

from __future__ import annotations

import math

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from sdft_tui.fit import fit_parts
from sdft_tui.run_figures import RunFigures, format_number

BRAILLE_BASE = 0x2800
# Dot bits by [column][row] inside a braille cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
SPARK = "▁▂▃▄▅▆▇█"
AXIS_WIDTH = 8        # left labels, e.g. "0.1234 ┤"
POINTS_PER_DOT = 4    # the recent window keeps about 4 points per horizontal dot


def _bins(n: int, pixels: int) -> list[tuple[int, int]]:
    """Split range(n) into ``pixels`` contiguous, non-empty slices (n >= pixels)."""
    return [(j * n // pixels, max((j + 1) * n // pixels, j * n // pixels + 1)) for j in range(pixels)]


def _columns(values: list[float], pixels: int) -> list[tuple[float, float, float] | None]:
    """(min, mean, max) of the finite values falling in each horizontal dot column; None if empty.

    Fewer points than columns: each point gets its own column, spread over the width.
    """
    n = len(values)
    out: list[tuple[float, float, float] | None] = [None] * pixels
    if n == 0:
        return out
    if n <= pixels:
        for i, v in enumerate(values):
            x = 0 if n == 1 else round(i * (pixels - 1) / (n - 1))
            if math.isfinite(v):
                out[x] = (v, v, v)
        return out
    for j, (a, b) in enumerate(_bins(n, pixels)):
        chunk = [v for v in values[a:b] if math.isfinite(v)]
        if chunk:
            out[j] = (min(chunk), sum(chunk) / len(chunk), max(chunk))
    return out


def plot_braille(raw: list[float], smooth: list[float], width: int, height: int, *,
                 log: bool = False) -> tuple[list[list[tuple[str, str]]], float, float]:
    """Rows of (character, layer) cells, layer in {"", "raw", "smooth"}, and the (low, high) of
    the y axis in data units. Raw points draw their min..max band, the smoothed line its mean,
    both joined to the previous column so the curve has no gaps."""
    width, height = max(1, width), max(1, height)
    xs, ys = width * 2, height * 4

    def tf(v: float) -> float:
        return math.log10(v) if log else v

    def ok(v: float) -> bool:
        return math.isfinite(v) and (v > 0 or not log)

    raw_t = [tf(v) if ok(v) else math.nan for v in raw]
    smooth_t = [tf(v) if ok(v) else math.nan for v in smooth]
    finite = [v for v in raw_t + smooth_t if math.isfinite(v)]
    cells_raw = [[0] * width for _ in range(height)]
    cells_smooth = [[0] * width for _ in range(height)]
    if finite:
        lo, hi = min(finite), max(finite)
    else:
        lo, hi = (0.0, 1.0)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad

    def ypix(v: float) -> int:
        return min(ys - 1, max(0, round((hi - v) / (hi - lo) * (ys - 1))))

    def draw(cells, x: int, y0: int, y1: int) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            cells[y // 4][x // 2] |= _DOTS[x % 2][y % 4]

    prev = None
    for x, col in enumerate(_columns(raw_t, xs)):
        if col is None:
            continue
        top, bottom = ypix(col[2]), ypix(col[0])
        if prev is not None:
            top, bottom = min(top, prev), max(bottom, prev)
        draw(cells_raw, x, top, bottom)
        prev = ypix(col[1])
    prev = None
    for x, col in enumerate(_columns(smooth_t, xs)):
        if col is None:
            continue
        y = ypix(col[1])
        draw(cells_smooth, x, y, y if prev is None else prev)
        prev = y

    rows = []
    for r in range(height):
        row = []
        for c in range(width):
            bits_s, bits_r = cells_smooth[r][c], cells_raw[r][c]
            if bits_s or bits_r:
                row.append((chr(BRAILLE_BASE | bits_s | bits_r), "smooth" if bits_s else "raw"))
            else:
                row.append((" ", ""))
        rows.append(row)
    low, high = (10 ** lo, 10 ** hi) if log else (lo, hi)
    return rows, low, high


def sparkline(values: list[float], width: int) -> str:
    """One row of block characters: the mean of each slice of ``values``, scaled min..max."""
    if width <= 0:
        return ""
    cols = [c[1] if c else None for c in _columns(values, width)] if values else [None] * width
    known = [v for v in cols if v is not None]
    if not known:
        return " " * width
    lo, hi = min(known), max(known)
    out = []
    for v in cols:
        if v is None:
            out.append(" ")
        elif hi - lo < 1e-30:
            out.append(SPARK[3])
        else:
            out.append(SPARK[min(7, int((v - lo) / (hi - lo) * 7.999))])
    return "".join(out)


class LossChart(Widget):
    """Raw + smoothed loss over the recent window (or the whole run), and the learning rate."""

    COMPONENT_CLASSES = {
        "loss-chart--raw", "loss-chart--smooth", "loss-chart--axis", "loss-chart--lr", "loss-chart--title",
        "loss-chart--val",
    }
    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 6; text-wrap: nowrap; text-overflow: clip; }
    LossChart > .loss-chart--raw { color: $primary-darken-1; }
    LossChart > .loss-chart--smooth { color: $warning; text-style: bold; }
    LossChart > .loss-chart--axis { color: $text-muted; }
    LossChart > .loss-chart--lr { color: $success; }
    LossChart > .loss-chart--title { color: $text; }
    LossChart > .loss-chart--val { color: $accent; text-style: bold; }
    """

    log_scale: reactive[bool] = reactive(False)
    whole_run: reactive[bool] = reactive(False)

    def __init__(self, figures: RunFigures, **kwargs) -> None:
        super().__init__(**kwargs)
        self.figures = figures

    def window(self, plot_width: int) -> slice:
        """Which points to draw: the recent ones (scrolls) or all of them."""
        n = len(self.figures.loss)
        if self.whole_run:
            return slice(0, n)
        keep = max(1, plot_width * 2 * POINTS_PER_DOT)
        return slice(max(0, n - keep), n)

    def render(self) -> Text:
        f = self.figures
        width, height = self.size.width, self.size.height
        plot_w = max(4, width - AXIS_WIDTH)
        plot_h = max(1, height - 3)   # title line, x axis line, lr line
        axis = self.get_component_rich_style("loss-chart--axis")
        styles = {
            "raw": self.get_component_rich_style("loss-chart--raw"),
            "smooth": self.get_component_rich_style("loss-chart--smooth"),
            "": Style(),
        }
        sel = self.window(plot_w)
        raw, smooth, steps, lrs = f.loss[sel], f.smooth[sel], f.steps[sel], f.lr[sel]
        text = Text(no_wrap=True, overflow="crop")
        text.append_text(self._title(raw, smooth))
        text.append("\n")
        if not raw:
            # the trainer logs step 1, so only a resume's first steps go by without a loss
            waiting = "waiting for the first step" if f.newest_step is None else "waiting for the next logged step"
            for r in range(plot_h):
                line = waiting if r == plot_h // 2 else ""
                text.append(" " * AXIS_WIDTH + line.center(plot_w)[:plot_w] + "\n", style=axis)
        else:
            rows, low, high = plot_braille(raw, smooth, plot_w, plot_h, log=self.log_scale)
            for r, row in enumerate(rows):
                if r == 0:
                    label = format_number(high)
                elif r == plot_h - 1:
                    label = format_number(low)
                else:
                    label = ""
                text.append(f"{label:>{AXIS_WIDTH - 2}} {'┤' if label else '│'}", style=axis)
                for ch, layer in row:
                    text.append(ch, style=styles[layer])
                text.append("\n")
        first, last = (steps[0], steps[-1]) if steps else (0, 0)
        span = f"step {first}" + (f" … {last}" if last != first else "")
        scope = ("whole run" if self.whole_run else "recent") + (" · log scale" if self.log_scale else "")
        text.append(" " * AXIS_WIDTH + f"{span} · {scope}"[:plot_w] + "\n",
                    style=axis)
        label = format_number(lrs[-1]) if lrs else "-"
        text.append(f"{'lr':>{AXIS_WIDTH - 2}}  ", style=axis)
        spark_w = max(0, plot_w - len(label) - 1)
        text.append(sparkline(lrs, spark_w), style=self.get_component_rich_style("loss-chart--lr"))
        text.append(" " + label, style=axis)
        return text

    def _title(self, raw: list[float], smooth: list[float]) -> Text:
        """The newest figures; what does not fit the pane goes whole (the running average first,
        then the validation loss's step), never a cut number."""
        f = self.figures
        style = self.get_component_rich_style
        parts = [(9, Text.assemble(("loss ", style("loss-chart--title")),
                                   (format_number(raw[-1]) if raw else "-", style("loss-chart--raw")))),
                 (8, Text.assemble(("  smoothed ", style("loss-chart--title")),
                                   (format_number(smooth[-1]) if smooth else "-", style("loss-chart--smooth"))))]
        if f.last is not None:
            parts.append((1, Text(f"  avg {format_number(f.last.loss_avg)}", style=style("loss-chart--axis"))))
        if f.validation is not None:
            step, loss = f.validation
            parts.append((7, Text.assemble(("  val ", style("loss-chart--title")),
                                           (format_number(loss), style("loss-chart--val")))))
            parts.append((2, Text(f" @{step}", style=style("loss-chart--axis"))))
        return fit_parts(parts, self.size.width, separator="")

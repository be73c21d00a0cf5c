"""Line charts as PNG, drawn with Pillow: the learning benchmark's validation-loss curves.

One chart, several series (one per model family or trainer), each a list of (step, value);
axes with round-number ticks, a light grid and a legend. Pillow only: no plotting library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

WIDTH, HEIGHT = 1000, 520
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 290, 50, 60   # the legend sits right of the plot
# Colour-blind-safe (Okabe-Ito), in the order series come.
COLOURS = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))
INK, GRID, PAPER = (40, 40, 40), (225, 225, 225), (255, 255, 255)


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round-number ticks (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(n * step, 12) for n in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def draw_chart(series: list[Series], *, title: str, x_label: str, y_label: str):
    """The chart as a PIL image; series without points are listed in the legend only."""
    from PIL import Image, ImageDraw

    from engine.train.sample_grid import label_font

    image = Image.new("RGB", (WIDTH, HEIGHT), PAPER)
    pen, font, big = ImageDraw.Draw(image), label_font(13), label_font(16)
    points = [p for s in series for p in s.points]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    x_ticks, y_ticks = nice_ticks(min(0.0, min(xs)), max(xs)), nice_ticks(min(ys), max(ys))
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    for x in x_ticks:
        px = at(x, y_ticks[0])[0]
        pen.line((px, top, px, bottom), fill=GRID)
        pen.text((px, bottom + 6), _label(x), fill=INK, font=font, anchor="mt")
    for y in y_ticks:
        py = at(x_ticks[0], y)[1]
        pen.line((left, py, right, py), fill=GRID)
        pen.text((left - 6, py), _label(y), fill=INK, font=font, anchor="rm")
    pen.rectangle((left, top, right, bottom), outline=INK)
    pen.text(((left + right) / 2, 14), title, fill=INK, font=big, anchor="mt")
    pen.text(((left + right) / 2, HEIGHT - 18), x_label, fill=INK, font=font, anchor="mb")
    pen.text((12, top - 24), y_label, fill=INK, font=font, anchor="lt")
    for n, one in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        line = [at(x, y) for x, y in one.points]
        if len(line) > 1:
            pen.line(line, fill=colour, width=2)
        for px, py in line:
            pen.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=colour)
        ly = top + 12 + 22 * n
        pen.line((right + 16, ly, right + 40, ly), fill=colour, width=3)
        pen.text((right + 46, ly), one.label, fill=INK, font=font, anchor="lm")
    return image


def save_chart(path: str | Path, series: list[Series], **labels) -> Path:
    from engine.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        draw_chart(series, **labels).save(tmp, format="PNG")
    return path

"""Human-readable numbers shared by the console output and the dashboard."""

from __future__ import annotations

import math


def format_duration(seconds: float | None) -> str:
    """3h05m, 6m20s, 42s; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def format_bytes(value: float | None) -> str:
    """GiB with one decimal (MiB below 1 GiB): what people compare with nvidia-smi."""
    if value is None:
        return "-"
    gib = value / 2**30
    if gib >= 1:
        return f"{gib:.1f} GiB"
    return f"{value / 2**20:.0f} MiB"


def format_number(value: float | None) -> str:
    """Compact: 0.1234, 1.2e-05, 12.3."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    a = abs(value)
    if a < 1e-3 or a >= 1e5:
        return f"{value:.2e}"
    if a < 1:
        return f"{value:.4f}"
    if a < 100:
        return f"{value:.3g}" if a >= 10 else f"{value:.3f}"
    return f"{value:.0f}"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 sampling point"``, ``"3 sampling points"``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"

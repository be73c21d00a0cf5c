"""Lines that fit their pane at 80 columns: whole parts are left out, least needed first, so
no figure is ever cut in the middle (a cut "3h0" or "12.…" reads as a wrong value)."""

from __future__ import annotations

from rich.text import Text


def fit_parts(parts: list[tuple[int, Text]], width: int, separator: str = " · ") -> Text:
    """``parts`` joined by ``separator`` in their order, leaving out the lowest priorities (the
    first number) until the line fits ``width``. Only when the most needed part alone is too long
    is it cut, with an ellipsis. A width of 0 or less (nothing measured yet) keeps them all."""
    kept = list(parts)

    def joined() -> Text:
        return Text(separator, no_wrap=True, overflow="ellipsis").join(text for _, text in kept)

    line = joined()
    while width > 0 and line.cell_len > width and len(kept) > 1:
        kept.remove(min(kept, key=lambda part: part[0]))
        line = joined()
    if width > 0:
        line.truncate(width, overflow="ellipsis")
    return line

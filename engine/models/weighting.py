"""AUTOMATIC1111's attention syntax for weighted captions. No torch here.

``(x)`` multiplies the weight of ``x`` by 1.1, ``[x]`` divides it by 1.1, ``(x:1.3)`` sets a
factor of 1.3; brackets nest (factors multiply); a bracket left open applies up to the end
of the text; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters. A closing bracket
with nothing open is kept as text, as A1111 does. Adjacent segments with equal weight merge.

The parse result is turned into token ids with a per-token weight list by
:func:`weighted_token_ids`; the chunk layout and the multiplication of the encoder states
happen in ``engine.models.text_encoding``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

# One lexical piece of a prompt, tried in this order:
#   an escape, an explicit weight ":<number>)" closing a round bracket, a bracket,
#   a run of ordinary text, or a lone ":" / "\" (kept as text).
_PIECE = re.compile(
    r"""
      (?P<escape>\\[()\[\]\\])
    | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<other>[:\\])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Segment:
    """A run of caption text and the attention weight that applies to it."""

    text: str
    weight: float


def parse_weighted_caption(text: str) -> list[Segment]:
    """Split ``text`` into (text, weight) segments following A1111's rules.

    Always returns at least one segment (``[Segment("", 1.0)]`` for an empty caption),
    so callers never special-case empty captions.
    """
    pieces: list[list] = []          # [text, weight] pairs, weights multiplied in place
    open_brackets: list[tuple[str, int]] = []   # (bracket char, index of its first piece)

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    def last_open(char: str) -> int | None:
        for pos in range(len(open_brackets) - 1, -1, -1):
            if open_brackets[pos][0] == char:
                return pos
        return None

    for match in _PIECE.finditer(text):
        kind = match.lastgroup  # the outer group name ("weight", not "number")
        value = match.group(0)
        if kind == "escape":
            pieces.append([value[1], 1.0])
        elif kind == "open":
            open_brackets.append((value, len(pieces)))
        elif kind == "weight":
            pos = last_open("(")
            factor = _as_float(match.group("number"))
            if pos is None or factor is None:
                # No "(" to close, or not a number: A1111 keeps such text literally.
                pieces.append([value, 1.0])
                continue
            # Round and square brackets nest independently (A1111 keeps two stacks).
            _, start = open_brackets.pop(pos)
            scale(start, factor)
        elif kind == "close":
            pos = last_open("(" if value == ")" else "[")
            if pos is None:
                pieces.append([value, 1.0])
                continue
            char, start = open_brackets.pop(pos)
            scale(start, ROUND_FACTOR if char == "(" else SQUARE_FACTOR)
        else:  # text or a lone ":" / "\"
            pieces.append([value, 1.0])

    # Unbalanced: whatever is still open closes at the end of the caption.
    for char, start in reversed(open_brackets):
        scale(start, ROUND_FACTOR if char == "(" else SQUARE_FACTOR)

    merged: list[Segment] = []
    for piece_text, weight in pieces:
        if merged and merged[-1].weight == weight:
            merged[-1] = Segment(merged[-1].text + piece_text, weight)
        else:
            merged.append(Segment(piece_text, weight))
    return merged or [Segment("", 1.0)]


def _as_float(number: str) -> float | None:
    try:
        return float(number)
    except ValueError:  # e.g. "1.2.3" or "."
        return None


@dataclass(frozen=True)
class WeightedTokens:
    """Text token ids (no BOS/EOS) with one weight per token, already cut to the limit."""

    ids: list[int]
    weights: list[float]
    total: int  # token count before truncation

    @property
    def truncated(self) -> bool:
        return self.total > len(self.ids)


def weighted_token_ids(tokenizer, captions: list[str], max_tokens: int) -> list[WeightedTokens]:
    """Tokenize each weighted caption segment by segment (no BOS/EOS), one batch call.

    Each segment is tokenized on its own, as A1111 does: ``super(man)`` becomes
    ``super`` + ``man``. Ids and weights are cut to ``max_tokens``.
    """
    parsed = [parse_weighted_caption(caption) for caption in captions]
    flat = [segment.text for segments in parsed for segment in segments]
    encoded = tokenizer(flat, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] if flat else []
    results: list[WeightedTokens] = []
    cursor = 0
    for segments in parsed:
        ids: list[int] = []
        weights: list[float] = []
        for segment in segments:
            segment_ids = list(encoded[cursor])
            cursor += 1
            ids.extend(segment_ids)
            weights.extend([segment.weight] * len(segment_ids))
        results.append(WeightedTokens(ids[:max_tokens], weights[:max_tokens], len(ids)))
    return results

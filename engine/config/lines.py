"""Map dotted keys of a TOML text to their line numbers, for error messages.

tomlkit keeps no line numbers, so this scans the text: table headers ``[a.b]`` and
array-of-table headers ``[[datasets]]`` / ``[[datasets.subsets]]`` (counted, giving
``datasets[0].subsets[1]``), and ``key = value`` lines. Inline tables and multi-line
values are attributed to the line their key starts on, which is what a user needs.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r'^\s*("[^"]*"|\'[^\']*\'|[A-Za-z0-9_\-.]+)\s*=')


def _clean(part: str) -> str:
    return part.strip().strip('"').strip("'")


def key_lines(text: str) -> dict[str, int]:
    """Dotted key (``datasets[0].subsets[1].num_repeats``) -> 1-based line number."""
    return {key: numbers[0] for key, numbers in key_occurrences(text).items()}


def key_occurrences(text: str) -> dict[str, list[int]]:
    """Dotted key -> every line that sets it (two lines = a key given twice)."""
    lines: dict[str, list[int]] = {}
    array_counts: dict[str, int] = {}    # array path (with parent indices) -> next index
    prefix = ""
    in_multiline: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in raw:
                in_multiline = None
            continue
        header = _HEADER.match(raw)
        if header and not raw.lstrip().startswith("#"):
            is_array = header.group(1) == "[["
            parts = [_clean(p) for p in header.group(2).split(".")]
            path = ""
            for i, part in enumerate(parts):
                path = f"{path}.{part}" if path else part
                last = i == len(parts) - 1
                if last and is_array:
                    index = array_counts.get(path, 0)
                    array_counts[path] = index + 1
                    path = f"{path}[{index}]"
                elif not last and path in array_counts:
                    path = f"{path}[{array_counts[path] - 1}]"
            prefix = path
            lines.setdefault(prefix, []).append(number)
            continue
        key = _KEY.match(raw)
        if key:
            dotted = ".".join(_clean(p) for p in key.group(1).split("."))
            full = f"{prefix}.{dotted}" if prefix else dotted
            lines.setdefault(full, []).append(number)
            value = raw.split("=", 1)[1]
            for quote in ('"""', "'''"):
                if value.count(quote) == 1:
                    in_multiline = quote
    return lines

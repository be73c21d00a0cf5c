"""kohya's ``key=value`` argument lists (``--optimizer_args``, ``--lr_scheduler_args``) as tables.

``["weight_decay=0.01", "betas=0.9,0.999"]`` reads as kohya-ss/sd-scripts reads it: each value is a
Python literal (``ast.literal_eval``: ``0.9,0.999`` is a tuple, ``True`` a bool), else the text
itself (kohya would stop there; a class or mode name is what is meant). A tuple is kept as a list,
TOML having no tuples. The run file's ``optimizer.args`` / ``lr_scheduler_args`` and
``sdft from-kohya`` both read lists through here.
"""

from __future__ import annotations

import ast
from typing import Any, Callable, Iterable


def parse_literal(text: str) -> Any:
    """A value as kohya's ``k=v`` lists read it: a Python literal, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_key_values(items: dict[str, Any] | str | Iterable[object], option: str) -> dict[str, Any]:
    """kohya's list (or one space-separated string of them) as a table; a table is taken as is.
    A ValueError names ``option`` and the item that is not ``key=value``."""
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = items.split()
    table: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=value (kohya's form: {option} = [\"weight_decay=0.01\"])")
        value = parse_literal(text.strip())
        table[key.strip()] = list(value) if isinstance(value, tuple) else value
    return table


def table_or_list(option: str) -> Callable[[object], object]:
    """The schema's normaliser for an arguments key: a table, or kohya's list of ``key=value``."""
    def normalise(value: object) -> object:
        return parse_key_values(value, option) if isinstance(value, list) else value
    return normalise

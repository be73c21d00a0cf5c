"""Typed, documented config fields: how every key of the run file and of kohya's dataset tables
is declared (``opt``) and how one value is checked against its declaration (``check_value``).

A key is a dataclass field: its type hint says what the file may hold, its metadata its help
text, choices, bounds and an optional normaliser. The run-file sections (schema.py) and the
dataset specs (dataset_specs.py) are both declared this way, so one checker judges them all.
Pure Python: the wizard imports this before any torch is loaded.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, Field, field
from pathlib import Path
from typing import Any, Callable, TypeVar, overload

T = TypeVar("T")
# What a key's normaliser takes (the file's value, any TOML type) and gives (the value kept).
Normalizer = Callable[[Any], Any]


# Typed as dataclasses.field is: the value stands for the field's default, so a checker sees a
# default that does not fit the key's type hint.
@overload
def opt(default: T, doc: str = "", *, choices: tuple[object, ...] | None = None, min: float | None = None,
        max: float | None = None, factory: None = None, normalize: Normalizer | None = None) -> T: ...
@overload
def opt(default: None = None, doc: str = "", *, choices: tuple[object, ...] | None = None,
        min: float | None = None, max: float | None = None, factory: Callable[[], T],
        normalize: Normalizer | None = None) -> T: ...
def opt(default: object = None, doc: str = "", *, choices: tuple[object, ...] | None = None,
        min: float | None = None, max: float | None = None, factory: Callable[[], object] | None = None,
        normalize: Normalizer | None = None) -> object:
    """A documented field. ``choices``/``min``/``max`` are checked by ``check_value``; ``normalize``
    turns what the file says into the value kept (a ValueError is the key's problem), before the
    checks: e.g. a name in any case into its registry spelling. ``default=MISSING``: required."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "normalize": normalize}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def required(doc: str = "", *, normalize: Normalizer | None = None) -> Any:
    """A documented field without a default (the dataclass must be built with it). Any: it has no
    default for a checker to compare with the key's type."""
    return opt(MISSING, doc, normalize=normalize)


def check_value(spec: Field[Any], hint: Any, value: Any) -> tuple[Any, tuple[str, str] | None]:
    """(the value to keep, None), or (None, (message, hint)) when ``value`` does not fit the field
    declared by ``spec`` with type ``hint``. The message ends with what the file said."""
    normalize = spec.metadata.get("normalize")
    if normalize is not None:
        try:
            value = normalize(value)
        except ValueError as exc:
            return None, (str(exc), field_doc(spec))
    error = _type_error(value, hint) or _range_error(value, spec)
    if error:
        return None, (f"{error}, got {value!r}", field_doc(spec))
    if hint is float and isinstance(value, int):
        value = float(value)
    return value, None


def field_doc(spec: Field[Any]) -> str:
    doc: str = spec.metadata.get("doc", "")
    return doc


def is_text(hint: Any) -> bool:
    """Does the key hold text (a name, a path) and never a number? ``"123"`` then stays a string."""
    args = typing.get_args(hint) if _is_union(hint) else (hint,)   # dict[str, Any] holds no text
    return bool({str, Path} & set(args)) and not ({int, float} & set(args))


def type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args and _is_union(hint):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path string",
            dict: "a table", list: "a list"}.get(typing.get_origin(hint) or hint, getattr(hint, "__name__", str(hint)))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _matches(value: Any, hint: Any) -> bool:
    if _is_union(hint):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    return isinstance(value, origin if origin is not None else hint)


def _type_error(value: Any, hint: Any) -> str | None:
    if not _matches(value, hint):
        return f"must be {type_name(hint)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None


def _range_error(value: Any, spec: Field[Any]) -> str | None:
    meta = spec.metadata
    choices = meta.get("choices")
    # a normaliser is the judge of its own values (optimizer.type: a choice or module.Class)
    if choices and value not in choices and not isinstance(value, bool) and meta.get("normalize") is None:
        return "must be one of " + ", ".join(repr(c) for c in choices if c is not None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("min") is not None and value < meta["min"]:
            return f"must be at least {meta['min']}"
        if meta.get("max") is not None and value > meta["max"]:
            return f"must be at most {meta['max']}"
    return None

"""Reading a config file's text and parsing it as TOML, with problems a user can act on.

One place for run TOMLs and kohya dataset TOMLs alike: a UTF-16 file or one that is not
UTF-8 gets an encoding hint (a UTF-8 byte-order mark is read, with a note), and a key given
twice names the key and both lines instead of ending in a parser traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config.problems import FILE_KEY, ConfigError, Problem, did_you_mean_file

SAVE_AS_UTF8 = "save it as UTF-8 (in most editors: Save As, encoding UTF-8)"
if TYPE_CHECKING:
    from tomlkit import TOMLDocument

_DUPLICATE = re.compile(r'Key "(?P<key>[^"]+)" already exists')


def read_config_text(path: str | Path, key: str = FILE_KEY) -> tuple[str, list[Problem]]:
    """(text, notes) of a config file; ConfigError when it cannot be read as UTF-8 text, or is
    not a regular file of a config file's size (engine/user_files.py)."""
    from engine.user_files import FileRefused, read_bytes

    path = Path(path)
    file = str(path)
    try:
        raw = read_bytes(path, "dataset config" if key == "dataset_config" else "run file")
    except FileNotFoundError:
        raise ConfigError([Problem(key, "file not found", did_you_mean_file(path) or "check the path", file)]) from None
    except FileRefused as exc:
        raise ConfigError([Problem(key, f"the file {exc.reason}", exc.hint, file)]) from None
    except OSError as exc:
        raise ConfigError([Problem(key, f"cannot read the file: {exc}", "", file)]) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) >= 4 and (raw[1:4:2] == b"\0\0" or raw[0:3:2] == b"\0\0")):
        raise ConfigError([Problem(key, "the file is UTF-16 encoded; sdft and kohya read TOML as UTF-8",
                                   SAVE_AS_UTF8, file, 1)])
    notes = []
    if raw.startswith(b"\xef\xbb\xbf"):
        notes.append(Problem(key, "the file starts with a UTF-8 byte-order mark (BOM); sdft reads it",
                             "kohya's scripts may not: save it as UTF-8 without BOM", file, 1, "note"))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([Problem(key, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})",
                                   SAVE_AS_UTF8, file, line)]) from None
    return text, notes


def parse_toml(text: str, file: str) -> TOMLDocument:
    """A tomlkit document; ConfigError with the line (both lines for a duplicate key)."""
    import tomlkit

    try:
        return tomlkit.parse(text)
    except Exception as exc:  # ParseError and its kinds, KeyAlreadyPresent (not a ParseError)
        if not isinstance(exc, tomlkit.exceptions.TOMLKitError):
            raise
        duplicate = _DUPLICATE.search(str(exc))
        if duplicate:
            raise ConfigError([_duplicate_problem(text, duplicate.group("key"), file, getattr(exc, "line", None))]) from None
        raise ConfigError([Problem(FILE_KEY, f"not valid TOML: {exc}", "fix the syntax at that line", file,
                                   getattr(exc, "line", None))]) from None


def _duplicate_problem(text: str, name: str, file: str, line: int | None) -> Problem:
    from engine.config.lines import key_occurrences

    twice = [(dotted, lines) for dotted, lines in key_occurrences(text).items()
             if len(lines) > 1 and re.sub(r"\[\d+\]$", "", dotted.rsplit(".", 1)[-1]) == name]
    if twice:
        dotted, lines = twice[0]
        where = " and ".join(str(n) for n in lines)
        return Problem(dotted, f"given twice, on lines {where}", "keep one of them (the parser refuses both)",
                       file, lines[-1])
    # Inside an inline table { a = 1, a = 2 }: the lines that mention the key.
    setting = re.compile(rf"(?:^|[{{,\s]){re.escape(name)}\s*=")
    lines = [n for n, raw in enumerate(text.splitlines(), start=1) if setting.search(raw)]
    if len(lines) > 1:
        where = f"on lines {lines[0]} and {lines[-1]}"
    elif lines:
        where = f"twice on line {lines[0]}"
    else:
        where = f"twice (line {line})" if line else "twice"
    return Problem(name, f"given {where}", "keep one of them (the parser refuses both)", file,
                   lines[-1] if lines else line)

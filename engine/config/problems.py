"""Configuration problems: collected all at once, each naming where and how to fix it."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

FILE_KEY = "<file>"   # a problem of the whole file (not found, not TOML): printed without a key


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a configuration file."""

    key: str                      # dotted key, e.g. "datasets[0].subsets[1].num_repeats"
    message: str                  # what is wrong, with the bad value
    hint: str = ""                # how to fix it
    file: str | None = None
    line: int | None = None       # 1-based, when known
    severity: str = "error"       # "error" | "warning" | "note"

    def subject(self) -> str:
        """``"key: "`` before the message; nothing for a problem of the whole file."""
        return "" if self.key == FILE_KEY else f"{self.key}: "

    def location(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or ""

    def __str__(self) -> str:
        where = self.location()
        text = f"{where}: " if where else ""
        text += f"{self.severity}: {self.subject()}{self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class ConfigError(Exception):
    """Raised with every error found, so a user fixes a file in one go."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = [p for p in problems]
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


# Where a checker reports what it finds: (dotted key, message, hint, severity).
Report = Callable[[str, str, str, str], None]

# kohya's old spellings, read as the current key (kohya keeps them for compatibility).
DEPRECATED_SPELLINGS = {"caption_extention": "caption_extension"}


def current_spelling(name: str, table: Mapping[str, Any], dotted: str, report: Report) -> str | None:
    """The key ``name`` stands for, reporting a deprecated spelling through ``report(key, message,
    hint, severity)``; None when both spellings are given (an error, reported)."""
    new = DEPRECATED_SPELLINGS.get(name)
    if new is None:
        return name
    where = dotted.rsplit(".", 1)[0] + "." + new if "." in dotted else new
    if new in table:
        report(dotted, f"both {name} (kohya's old spelling) and {new} are given", f"remove {name}", "error")
        return None
    report(dotted, f"kohya's old spelling of {new}: read as {where}", f"rename it to {new}", "note")
    return new


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A 'did you mean ...' hint for an unknown key, or a list of the valid ones."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return "valid keys: " + ", ".join(choices)


def did_you_mean_file(path: str | Path) -> str:
    """For a path that does not exist: 'did you mean photos/run.toml?' naming close names in
    its folder, written as the user wrote the path; "" when none is close."""
    path = Path(path)
    try:
        names = sorted(p.name for p in path.parent.iterdir())
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=2, cutoff=0.6)
    return f"did you mean {' or '.join(str(path.with_name(name)) for name in close)}?" if close else ""


@dataclass
class ProblemList:
    """Accumulates problems while validating; raise once at the end."""

    file: str | None = None
    items: list[Problem] = field(default_factory=list)
    line_of: dict[str, int] = field(default_factory=dict)   # dotted key -> line

    def add(self, key: str, message: str, hint: str = "", severity: str = "error") -> None:
        self.items.append(Problem(key, message, hint, self.file, self.line_of.get(key), severity))

    def warn(self, key: str, message: str, hint: str = "") -> None:
        self.add(key, message, hint, "warning")

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.items)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise ConfigError(self.items)

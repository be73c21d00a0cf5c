"""How a conversion is shown (the table) and written (the run TOML with its header).

No secret is ever written: the header repeats the source command with the values of token and
API-key options replaced (engine/kohya/options.py, ``is_secret``), and the rows of such options
say their value was left out.
"""

from __future__ import annotations

import typing

from engine.kohya.options import is_secret

if typing.TYPE_CHECKING:
    from engine.kohya.convert import Conversion, Row

REDACTED = "<redacted>"
# Why a GUI config's field is left out when it was never chosen (a GUI file holds every field).
AT_DEFAULT = "kohya's default"
EMPTY = "empty: the GUI leaves the option out (not set)"
ZERO_UNSET = "0: the GUI leaves the option out (not set)"
UNCHOSEN = (AT_DEFAULT, EMPTY, ZERO_UNSET)
NOT_WRITTEN = "its value is written nowhere, not even in the file's header"


def redact(tokens: list[str]) -> list[str]:
    """The command with each secret option's value replaced: ``--huggingface_token=<redacted>``."""
    out, hide_next = [], False
    for token in tokens:
        if hide_next and not token.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        name, eq, _value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name and is_secret(name):
            if eq:
                token = f"--{name}={REDACTED}"
            else:
                hide_next = True
        out.append(token)
    return out


def mark_secrets(rows: list[Row]) -> None:
    """A secret option's row says its value was not written."""
    for row in rows:
        if is_secret(row.option) and row.value not in (None, "", False):
            row.value = REDACTED
            if row.refused:
                row.refused += f"; {NOT_WRITTEN}"
            else:
                row.note = f"{row.note}; {NOT_WRITTEN}" if row.note else NOT_WRITTEN


def name_of(row: Row) -> str:
    return row.label if row.label is not None else f"--{row.option}"


def render(conversion: Conversion, source: str | list[str]) -> str:
    """The run TOML text, headed by where it came from (secrets redacted) and what was left out."""
    import textwrap

    import tomlkit

    text = tomlkit.dumps(conversion.document)
    shown = " ".join(redact(source)) if isinstance(source, list) else source
    lines = textwrap.wrap(shown, width=94, break_long_words=False, break_on_hyphens=False)
    header = "# Converted by `sdft from-kohya` from:\n" + "".join(f"#   {line}\n" for line in lines)
    header += f"# as kohya's {conversion.script}\n"
    plain = [r for r in conversion.dropped if r.dropped in UNCHOSEN]
    dropped = [f"#   {name_of(r)}: {r.dropped}\n" for r in conversion.dropped if r not in plain]
    if plain:   # a GUI config holds every field: those at a default or empty are counted, not listed
        dropped.append(f"#   and {len(plain)} setting(s) at kohya's default or empty (the table lists them)\n")
    if dropped:
        header += "# Left out (kohya ignores them, or sdft does that anyway):\n" + "".join(dropped)
    refused = [f"#   {name_of(r)}: {r.refused}\n" for r in conversion.refused]
    if refused:
        header += "# Refused (not in this file):\n" + "".join(refused)
    return header + "# Check it with: sdft train THIS.toml --check\n\n" + text


def report_lines(conversion: Conversion) -> list[tuple[str, str, str]]:
    """(option, where it went / "left out" / "refused", why or note): converted first, refused last."""
    def order(row: Row) -> int:
        return 2 if row.refused else 1 if row.dropped else 0

    out = []
    for r in sorted(conversion.rows, key=order):
        if r.refused:
            out.append((name_of(r), "refused", r.refused))
        elif r.dropped:
            out.append((name_of(r), "left out", r.dropped))
        else:
            out.append((name_of(r), "; ".join(r.went), r.note or ""))
    return out

"""A kohya ``fine_tune.py`` command line or ``--config_file`` TOML, turned into a run TOML.

:func:`from_command` takes the command as typed (``accelerate launch [its flags] fine_tune.py
--opt=value ...``, ``python fine_tune.py ...`` or just the options); :func:`from_config_file`
takes kohya's config TOML, flat or sectioned as the kohya_ss GUI writes it (kohya reads every
table's keys as options). Both give a :class:`Conversion`: the run document and one row per
option saying where it went or why it was refused. Options are described in
:mod:`engine.kohya.options`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.key_values import parse_literal
from engine.kohya.options import FLAG, KNOWN, LIST
from engine.kohya.values import KohyaValueError

SCRIPTS = ("fine_tune.py",)
DATASET_TABLES = ("general.", "subset.")


@dataclass
class Row:
    option: str
    value: Any
    went: list[str] = field(default_factory=list)   # "model.v2 = true", ...
    refused: str | None = None
    note: str | None = None


@dataclass
class Conversion:
    document: dict
    rows: list[Row]

    @property
    def refused(self) -> list[Row]:
        return [r for r in self.rows if r.refused]


# ---------------------------------------------------------------- reading


def kohya_arguments(tokens: list[str]) -> list[str]:
    """The options after the script: drops ``accelerate launch`` and its own flags, ``python``
    and the script path. Tokens with no script are taken as options already."""
    for index, token in enumerate(tokens):
        if Path(token).name in SCRIPTS or token.endswith(".py"):
            return tokens[index + 1:]
    return list(tokens)


def parse_options(args: list[str]) -> tuple[dict[str, Any], list[Row]]:
    """kohya's argv as {option: text, True for flags, [texts] for lists}; rows for what is not one."""
    options: dict[str, Any] = {}
    problems: list[Row] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--"):
            problems.append(Row(token, None, refused="not an option (kohya's options start with --)"))
            continue
        name, eq, text = token[2:].partition("=")
        opt = KNOWN.get(name)
        if opt is None:
            if not eq and i < len(args) and not args[i].startswith("--"):
                text, i = args[i], i + 1      # its value, so it is not read as a stray word
            problems.append(Row(name, text or None, refused="not an option of kohya's fine_tune.py"))
            continue
        if opt.kind == FLAG:
            options[name] = True
        elif opt.kind == LIST:
            values = [text] if eq else []
            while not eq and i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                i += 1
            options[name] = values
        elif eq:
            options[name] = text
        elif i < len(args):
            options[name] = args[i]
            i += 1
        else:
            problems.append(Row(name, None, refused="needs a value"))
    return options, problems


def read_config_file(path: str | Path) -> dict[str, Any]:
    """kohya's ``--config_file`` TOML: keys at the top or inside any table are options."""
    import tomllib

    data = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


# ---------------------------------------------------------------- converting


def from_command(tokens: list[str]) -> Conversion:
    options, problems = parse_options(kohya_arguments(tokens))
    if "config_file" in options:   # kohya: the file first, the command line wins
        merged = {k: v for k, v in read_config_file(options["config_file"]).items() if not _is_default(k, v)}
        options = {**merged, **options}
    return convert(options, problems)


def from_config_file(path: str | Path) -> Conversion:
    options = {k: v for k, v in read_config_file(path).items() if not _is_default(k, v)}
    problems = [Row(k, v, refused="not an option of kohya's fine_tune.py") for k, v in options.items()
                if k not in KNOWN]
    return convert({k: v for k, v in options.items() if k in KNOWN}, problems)


def _is_default(name: str, value: Any) -> bool:
    """kohya's config files hold every option; one at kohya's default was not chosen."""
    opt = KNOWN.get(name)
    if opt is None:
        return False
    return value in (None, "", []) or value is False or (opt.default is not None and value == opt.default)


def convert(options: dict[str, Any], problems: list[Row] | None = None) -> Conversion:
    rows = list(problems or [])
    values: dict[str, Any] = {}
    with_dataset_file = "dataset_config" in options
    for name, raw in options.items():
        opt = KNOWN[name]
        row = Row(name, raw, note=opt.note)
        rows.append(row)
        if opt.refused:
            row.refused = opt.refused
            continue
        if name == "config_file":
            row.went = ["(read)"]
            continue
        try:
            targets = opt.to(raw, options) if callable(opt.to) else {opt.to: raw}
            targets = {key: _typed(key, value) for key, value in targets.items()}
        except KohyaValueError as exc:
            row.refused = str(exc)
            continue
        if with_dataset_file and any(key.startswith(DATASET_TABLES) for key in targets):
            row.refused = "kohya ignores it when --dataset_config is given: set it in the dataset TOML"
            continue
        for key, value in targets.items():
            values[key] = value
            row.went.append(f"{key} = {_show(value)}")
    return Conversion(_document(values), rows)


def _typed(key: str, value: Any) -> Any:
    """A command-line text in the type the run file's key takes (config files are typed already)."""
    if not isinstance(value, str):
        return list(value) if isinstance(value, tuple) else value
    if _holds_text(key):
        return value          # a path or a caption prefix stays text, even "123"
    parsed = parse_literal(value)
    return list(parsed) if isinstance(parsed, tuple) else parsed


def _holds_text(key: str) -> bool:
    """Does the run file's ``key`` (dotted; dataset keys as general.x / datasets.x) hold text?"""
    from engine.config.fields import is_text

    if key == "dataset_config":
        return True
    if key.startswith(DATASET_TABLES):
        from engine.config.dataset import FILE_KEYS

        declared = FILE_KEYS.get(key.split(".", 1)[1])
        return declared is not None and is_text(declared[1])
    from engine.config.schema import SECTIONS

    section, *names = key.split(".")
    cls = SECTIONS[section]
    for name in names[:-1]:
        cls = typing.get_type_hints(cls)[name]
    return is_text(typing.get_type_hints(cls)[names[-1]])


def _show(value: Any) -> str:
    import tomlkit

    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    return tomlkit.item(value).as_string()


def _document(values: dict[str, Any]) -> dict:
    """Nested run-file tables from dotted keys; general.* / subset.* become kohya's dataset tables."""
    doc: dict[str, Any] = {"config_version": 1}
    general = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("general.")}
    subset = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("subset.")}
    for key, value in values.items():
        if key.startswith(DATASET_TABLES):
            continue
        if key == "dataset_config":
            doc["dataset_config"] = value
            continue
        table = doc
        *parents, last = key.split(".")
        for name in parents:
            table = table.setdefault(name, {})
        table[last] = value
    if general:
        doc["general"] = general
    if subset or general:
        doc["datasets"] = [{"subsets": [subset]}]
    return doc


def render(conversion: Conversion, source: str) -> str:
    """The run TOML text, headed by where it came from."""
    import tomlkit

    import textwrap

    text = tomlkit.dumps(conversion.document)
    lines = textwrap.wrap(source, width=94, break_long_words=False, break_on_hyphens=False)
    header = "# Converted by `sdft from-kohya` from:\n" + "".join(f"#   {line}\n" for line in lines)
    refused = [f"#   --{r.option}: {r.refused}\n" for r in conversion.refused]
    if refused:
        header += "# Refused (not in this file):\n" + "".join(refused)
    return header + "# Check it with: sdft train THIS.toml --check\n\n" + text


def report_lines(conversion: Conversion) -> list[tuple[str, str, str]]:
    """(option, where it went or "refused", why / note) per option, refused ones last."""
    rows = sorted(conversion.rows, key=lambda r: r.refused is not None)
    out = []
    for r in rows:
        if r.refused:
            out.append((f"--{r.option}", "refused", r.refused))
        else:
            out.append((f"--{r.option}", "; ".join(r.went), r.note or ""))
    return out


__all__ = ["Conversion", "Row", "from_command", "from_config_file", "convert", "render", "report_lines",
           "kohya_arguments", "parse_options", "read_config_file"]

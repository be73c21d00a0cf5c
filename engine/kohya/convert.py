"""A kohya command line or config file, turned into a run TOML.

:func:`from_command` takes the command as typed (``accelerate launch [its flags] fine_tune.py
--opt=value ...``, ``python train_db.py ...`` or just the options); :func:`from_config_file`
takes kohya's config TOML, flat or sectioned (kohya reads every table's keys as options), or a
kohya_ss GUI config JSON, found by its content (engine/kohya/gui.py). The script is recognised
by its name (engine/kohya/scripts.py). Both give a :class:`Conversion`: the run document and one
row per option saying where it went, why it was dropped (kohya ignores it) or why it was
refused. Options are described in :mod:`engine.kohya.options`; how a conversion is shown and
written is engine/kohya/report.py.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.key_values import parse_literal
from engine.kohya.options import FLAG, KNOWN, LIST, SDXL_KNOWN, SDXL_OWN
from engine.kohya.scripts import FINE_TUNE, SDXL_TRAIN, TRAIN_DB, Script, recognise
from engine.kohya.values import KohyaValueError

DATASET_TABLES = ("general.", "subset.")
# fine_tune.py's options that train_db.py has not (it reads folders, and always trains the text encoder)
NOT_IN_TRAIN_DB = ("in_json", "dataset_repeats", "diffusers_xformers", "train_text_encoder")


@dataclass
class Row:
    option: str
    value: Any
    went: list[str] = field(default_factory=list)   # "model.v2 = true", ...
    refused: str | None = None
    note: str | None = None
    dropped: str | None = None    # left out on purpose: kohya ignores it, or it is what sdft does anyway
    label: str | None = None      # how the input names it, when not --option (a GUI key, the script)


@dataclass
class Conversion:
    document: dict
    rows: list[Row]
    script: str = FINE_TUNE

    @property
    def refused(self) -> list[Row]:
        return [r for r in self.rows if r.refused]

    @property
    def dropped(self) -> list[Row]:
        return [r for r in self.rows if r.dropped and not r.refused]


# ---------------------------------------------------------------- reading


def split_command(tokens: list[str]) -> tuple[str | None, list[str]]:
    """(the script's name or None, the options after it): drops ``accelerate launch`` and its own
    flags, ``python`` and the script path. Tokens with no script are taken as options already."""
    for index, token in enumerate(tokens):
        if token.endswith(".py"):
            return token, tokens[index + 1:]
    return None, list(tokens)


def known_to(script: Script) -> dict:
    """The options ``script`` takes (kohya's other SD trainers' options that sdft has are taken too;
    sdxl_train.py's own only by sdxl_train.py, where a few of fine_tune.py's mean something else)."""
    if script.name == SDXL_TRAIN:
        return SDXL_KNOWN
    sd = {k: v for k, v in KNOWN.items() if k not in SDXL_OWN}
    if script.folders:
        return {k: v for k, v in sd.items() if k not in NOT_IN_TRAIN_DB}
    return sd


def not_an_option(name: str, script: Script) -> str:
    if name in SDXL_OWN and script.name != SDXL_TRAIN:
        return (f"an option of kohya's {SDXL_TRAIN}, not of {script.name}: convert the {SDXL_TRAIN} command "
                "(sdft reads SDXL from the model)")
    return f"not an option of kohya's {script.name}"


def parse_options(args: list[str], script: Script | None = None) -> tuple[dict[str, Any], list[Row]]:
    """kohya's argv as {option: text, True for flags, [texts] for lists}; rows for what is not one."""
    script = script or Script(FINE_TUNE)
    known = known_to(script)
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
        opt = known.get(name)
        if opt is None:
            if not eq and i < len(args) and not args[i].startswith("--"):
                text, i = args[i], i + 1      # its value, so it is not read as a stray word
            problems.append(Row(name, text or None, refused=not_an_option(name, script)))
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
    from engine.kohya.gui import read_config

    kind, data = read_config(path)
    if kind != "toml":
        raise ValueError(f"{path} is JSON, and kohya's --config_file is a TOML; a kohya_ss GUI config converts "
                         "with: sdft from-kohya --config-file FILE")
    return flat_options(data)


def flat_options(data: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


# ---------------------------------------------------------------- converting


def from_command(tokens: list[str]) -> Conversion:
    name, args = split_command(tokens)
    script = recognise(name) if name else Script(FINE_TUNE)
    options, problems = parse_options(args, script)
    if "config_file" in options:   # kohya: the file first, the command line wins
        merged = {k: v for k, v in read_config_file(options["config_file"]).items() if not is_default(k, v)}
        options = {**merged, **options}
    return convert(options, _script_rows(script) + problems, script=script)


def from_config_file(path: str | Path) -> Conversion:
    """kohya's config TOML (its script told by its options), or a kohya_ss GUI JSON."""
    from engine.kohya.gui import from_gui_config, read_config

    path = Path(path)
    kind, data = read_config(path)
    if kind == "json":
        return from_gui_config(data, path)
    options = {k: v for k, v in flat_options(data).items() if not is_default(k, v)}
    script = script_of_options(options, path.parent)
    known = known_to(script)
    problems = [_unknown_in_file(k, v, script) for k, v in options.items() if k not in known]
    rows = [Row(script.name, None, label=script.name, note=script.note)] if script.note else []
    return convert({k: v for k, v in options.items() if k in known}, rows + problems, script=script,
                   base=path.parent)


def script_of_options(options: dict[str, Any], base: Path) -> Script:
    """A config file does not name its script: train_db.py when it holds train_db.py's own options,
    or reads kohya's N_name folders without a metadata file; else fine_tune.py."""
    from engine.data.kohya_folders import is_layout
    from engine.kohya.dreambooth import OWN_OPTIONS

    sdxl = sorted(k for k in SDXL_OWN if k in options)
    if sdxl:
        return Script(SDXL_TRAIN, family="sdxl", note=f"read as {SDXL_TRAIN}'s options: it holds {', '.join(sdxl)}")
    own = sorted(k for k in OWN_OPTIONS if k in options)
    folder = options.get("train_data_dir")
    layout = bool(folder) and "in_json" not in options and any(
        is_layout(p) for p in (Path(str(folder)), base / str(folder)))
    if not (own or layout):
        return Script(FINE_TUNE)
    why = f"it holds {', '.join(own)}" if own else f"{folder} holds kohya's N_name folders"
    return Script(TRAIN_DB, folders=True, note=f"read as train_db.py's options: {why}")


def _unknown_in_file(name: str, value: Any, script: Script) -> Row:
    """kohya ignores keys of a config file it does not know; the kohya_ss GUI writes a few of its own."""
    from engine.kohya.gui import is_gui_field

    if is_gui_field(name):
        return Row(name, value, dropped="a kohya_ss GUI field, which kohya ignores in a config file")
    return Row(name, value, refused=not_an_option(name, script))


def _script_rows(script: Script) -> list[Row]:
    return [Row(script.name, None, label=script.name, note=script.note)] if script.note else []


def is_default(name: str, value: Any) -> bool:
    """kohya's config files hold every option; one at kohya's default was not chosen."""
    opt = KNOWN.get(name)
    if opt is None:
        return False
    if isinstance(value, str) and opt.default is not None and not isinstance(opt.default, str):
        value = parse_literal(value)   # a GUI's "1" for kohya's 1
    return value in (None, "", []) or value is False or (opt.default is not None and value == opt.default)


def convert(options: dict[str, Any], problems: list[Row] | None = None, *, script: Script | None = None,
            base: Path | None = None) -> Conversion:
    script = script or Script(FINE_TUNE)
    rows = list(problems or [])
    values: dict[str, Any] = {}
    options = dict(options)
    if script.reads_folders(options):
        from engine.kohya.dreambooth import folder_rows

        found, values = folder_rows(options, base or Path.cwd(), text_encoder=script.name == TRAIN_DB)
        rows += found
    with_dataset_file = "dataset_config" in options
    known = known_to(script)
    for name, raw in options.items():
        rows.append(_converted(known[name], name, raw, options, values, with_dataset_file))
    _drop_ignored(values, rows)
    mark_secrets(rows)
    return Conversion(_document(values), rows, script.name)


def _converted(opt, name: str, raw: Any, options: dict, values: dict, with_dataset_file: bool) -> Row:
    """One option's row (``opt``: how the script takes it); what it sets is added to ``values``."""
    row = Row(name, raw, note=opt.note)
    if opt.refused:
        row.refused = opt.refused
        return row
    if name == "config_file":
        row.went = ["(read)"]
        return row
    try:
        targets = opt.to(raw, options) if callable(opt.to) else {opt.to: raw}
        targets = {key: _typed(key, value) for key, value in targets.items()}
    except KohyaValueError as exc:
        row.refused = str(exc)
        return row
    if with_dataset_file and any(key.startswith(DATASET_TABLES) for key in targets):
        row.dropped = "kohya ignores it when --dataset_config is given: set it in the dataset TOML"
        return row
    if not targets:
        row.dropped = opt.note or "what sdft does anyway: nothing to write"
    for key, value in targets.items():
        values[key] = value
        row.went.append(f"{key} = {_show(value)}")
    return row


def _drop_ignored(values: dict[str, Any], rows: list[Row]) -> None:
    """Leave out what kohya would ignore (engine/kohya/ignored.py), saying so on its row."""
    from engine.kohya.ignored import ignored_values

    for key, why in ignored_values(values).items():
        del values[key]
        for row in rows:
            kept = [w for w in row.went if not w.startswith(f"{key} = ")]
            if len(kept) == len(row.went):
                continue
            row.went = kept
            if kept:
                row.note = f"{key} left out: {why}"
            else:
                row.dropped = why


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
    """Nested run-file tables from dotted keys; general.* / subset.* become kohya's dataset tables,
    and ``datasets.subsets`` (train_db.py's folders) its subsets."""
    doc: dict[str, Any] = {"config_version": 1}
    general = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("general.")}
    subset = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("subset.")}
    for key, value in values.items():
        if key.startswith(DATASET_TABLES) or key == "datasets.subsets":
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
    subsets = values.get("datasets.subsets") or ([subset] if subset or general else [])
    if subsets:
        doc["datasets"] = [{"subsets": subsets}]
    return doc


from engine.kohya.report import mark_secrets, render, report_lines  # noqa: E402 - render, report_lines re-exported

__all__ = ["Conversion", "Row", "from_command", "from_config_file", "convert", "render", "report_lines",
           "split_command", "parse_options", "read_config_file", "is_default"]

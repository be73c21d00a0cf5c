"""A kohya_ss GUI config (JSON), read as the GUI reads it before it launches kohya.

The GUI (bmaltais/kohya_ss, ``kohya_gui/finetune_gui.py`` and ``dreambooth_gui.py``) turns its
fields into a script's options: ``optimizer`` is ``--optimizer_type``, ``max_resolution``
``--resolution``, ``lr_warmup`` a percentage of the steps, ``epoch`` becomes ``--max_train_steps``
from the image count, ``train_dir`` + ``caption_metadata_filename`` the ``--in_json`` path, and
0 or "" means "not set". Here the same translation gives kohya's options, which
engine/kohya/convert.py converts like a command line's; the table names each GUI key. Its keys:
engine/kohya/gui_keys.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.kohya import gui_keys as keys
from engine.kohya.options import FLAG
from engine.kohya.report import AT_DEFAULT, EMPTY, ZERO_UNSET
from engine.kohya.scripts import FINE_TUNE, SDXL_TRAIN, TRAIN_DB, NotConvertible, Script, recognise, refusal_of


def read_config(path: str | Path) -> tuple[str, dict]:
    """("json", data) for a GUI config, ("toml", data) for kohya's config file: by the content, so
    the extension does not matter. A ValueError says which format failed and how."""
    import tomllib

    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):   # a TOML table header, or a JSON list
        try:
            return "json", json.loads(text)
        except json.JSONDecodeError:
            pass
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); a kohya_ss GUI "
                             "config is a JSON object, kohya's --config_file a TOML") from None
        return "json", data
    try:
        return "toml", tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"neither a kohya config TOML ({exc}) nor a kohya_ss GUI config, which is a JSON object "
                         "starting with {") from None


def from_gui_config(data: Any, path: Path):
    """The Conversion of a GUI config; NotConvertible for a LoRA, an embedding or another family."""
    from engine.kohya.convert import convert

    _check_is_gui(data, path)
    script = recognise(script_of(data))
    read = gui_options(data, script, path.parent)
    conversion = convert(read.options, read.rows, script=script, base=path.parent)
    for row in conversion.rows:
        if row.label is None:
            row.label = read.labels.get(row.option, row.option)
        if row.option in read.notes and not row.refused:
            row.note = read.notes[row.option] + (f"; {row.note}" if row.note else "")
    return conversion


def _check_is_gui(data: Any, path: Path) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds a JSON {type(data).__name__}; a kohya_ss GUI config is a JSON object")
    if {"general", "datasets"} & data.keys():
        raise ValueError(f"{path.name} is a kohya dataset config, not a training config: name it in the run TOML "
                         f'as dataset_config = "{path}"')
    if data and all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path.name} is a kohya metadata file (captions per image), not a training config: a "
                         "subset reads it as metadata_file")


def script_of(data: dict) -> str:
    """The script the GUI would launch for this config."""
    method = "network" if any(k in data for k in keys.LORA_KEYS) else (
        "textual_inversion" if any(k in data for k in keys.EMBEDDING_KEYS) else None)
    family = next((script for switch, script in keys.FAMILY_SWITCHES.items() if data.get(switch)), None)
    if method:
        script = f"{family.removesuffix('.py') if family else 'train'}_{method}.py"
        raise NotConvertible(f"this kohya_ss GUI config is for {script}: " + (refusal_of(script) or ""))
    if family == SDXL_TRAIN:
        return SDXL_TRAIN   # both tabs launch sdxl_train.py for SDXL
    if family:
        raise NotConvertible(f"this kohya_ss GUI config is for {family}: " + (refusal_of(family) or ""))
    return FINE_TUNE if is_fine_tune_tab(data) else TRAIN_DB


def is_fine_tune_tab(data: dict) -> bool:
    """The fine-tune tab wrote it (a metadata file), else the DreamBooth tab (N_name folders)."""
    return any(k in data for k in keys.FINE_TUNE_KEYS)


def is_gui_field(key: str) -> bool:
    """One of the kohya_ss GUI's own fields (not a kohya option)."""
    return (key in keys.RENAMED or key in keys.GUI_ONLY or key in keys.OFF_ONLY or key in DERIVED
            or key in keys.FAMILY_SWITCHES or keys.is_family_key(key))


def gui_value(value: Any) -> Any:
    """A GUI field as a kohya option value: text stripped, "" and None unset, 1.0 as 1."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class GuiRead:
    """What a GUI config says as kohya's options, and how the table names and explains them."""

    fields: dict[str, Any]                                  # the GUI's fields, as gui_value reads them
    script: Script
    base: Path                                              # the config's folder (relative paths)
    options: dict[str, Any] = field(default_factory=dict)   # kohya's options
    rows: list = field(default_factory=list)                # the GUI's own keys
    labels: dict[str, str] = field(default_factory=dict)    # option -> the GUI key it came from
    notes: dict[str, str] = field(default_factory=dict)     # option -> how the GUI made it

    @property
    def fine_tune_tab(self) -> bool:
        return is_fine_tune_tab(self.fields)


def gui_options(data: dict, script: Script, base: Path) -> GuiRead:
    """The GUI's fields as kohya's options, with rows for the GUI's own keys."""
    from engine.kohya.convert import Row, known_to

    read = GuiRead({k: gui_value(v) for k, v in data.items()}, script, base)
    fields, options, rows, labels = read.fields, read.options, read.rows, read.labels
    known = known_to(script)
    sdxl = script.name == SDXL_TRAIN
    renamed = {**keys.RENAMED, **(keys.SDXL_RENAMED if sdxl else {})}
    for key, value in fields.items():
        if key in known:
            unset = _take(known[key], key, value, options)
            if unset:
                rows.append(Row(key, value, label=key, dropped=unset))
        elif key in renamed:
            if value not in (None, 0, False):
                options[renamed[key]] = True if known[renamed[key]].kind == FLAG else value
                labels[renamed[key]] = key
            elif key in keys.SDXL_RENAMED:
                rows.append(Row(key, value, label=key, dropped=f"off: no --{renamed[key]}"))
        elif sdxl and key in keys.FAMILY_SWITCHES and keys.FAMILY_SWITCHES[key] == SDXL_TRAIN:
            rows.append(Row(key, value, label=key, dropped=f"the SDXL switch: the GUI launches {SDXL_TRAIN}"
                            if value else "off"))
        elif sdxl and key in keys.NOT_FOR_SDXL:
            rows.append(Row(key, value, label=key, dropped=keys.NOT_FOR_SDXL[key]))
        elif key in keys.FAMILY_SWITCHES or keys.is_family_key(key):
            rows.append(Row(key, value, label=key, dropped=keys.FAMILY_NOTE))
        elif key in keys.GUI_ONLY:
            rows.append(Row(key, value, label=key, dropped=keys.GUI_ONLY[key]))
        elif key in keys.OFF_ONLY:
            rows.append(Row(key, value, label=key, refused=keys.OFF_ONLY[key]) if value else
                        Row(key, value, label=key, dropped=f"off ({keys.OFF_ONLY[key]})"))
        elif key not in DERIVED:
            rows.append(Row(key, value, label=key, refused="not a kohya_ss GUI setting sdft knows: nothing is "
                                                           "done with it"))
    for step in (_attention, _compile, _launch, _extra_options, _prompts, _warm_up, data_fields, length):
        step(read)
    return read


def _take(opt, name: str, value: Any, options: dict) -> str | None:
    """A field named as kohya's option (``opt``: how the script takes it): a flag when true, a
    value when set; else why it is not (0 is unset where the GUI leaves the option out for it;
    a GUI file holds every default)."""
    from engine.kohya.convert import is_default

    if opt.kind != FLAG and value == 0 and not isinstance(value, bool) and name not in keys.ZERO_IS_A_RATE and (
            opt.default is None or name in keys.ZERO_IS_UNSET):
        return ZERO_UNSET
    if name in ("optimizer_args", "lr_scheduler_args") and isinstance(value, str):
        value = value.replace('"', "").split()   # the GUI's own splitting
    if is_default(name, value):
        return EMPTY if value in (None, "", []) else AT_DEFAULT
    options[name] = True if opt.kind == FLAG else value
    return None


def _attention(read: GuiRead) -> None:
    """``xformers`` is the GUI's attention drop-down: "xformers", "sdpa" or "none" (old files: true)."""
    from engine.kohya.convert import Row

    fields, options, labels = read.fields, read.options, read.labels
    choice = fields.get("xformers")
    options.pop("xformers", None)
    if choice in (True, "xformers"):
        options["xformers"] = True
    elif choice == "sdpa":
        options["sdpa"] = True
        labels["sdpa"] = "xformers"
    elif "xformers" in fields:
        read.rows.append(Row("xformers", choice, label="xformers",
                             dropped="no attention option: PyTorch's SDPA, sdft's default"))


def _compile(read: GuiRead) -> None:
    """accelerate's dynamo backend: "no" compiles nothing; another compiles the model (torch.compile)."""
    from engine.kohya.convert import Row

    fields, options, labels, rows = read.fields, read.options, read.labels, read.rows
    backend = fields.get("dynamo_backend")
    options.pop("dynamo_backend", None)
    if backend not in (None, "no"):
        options["torch_compile"] = True
        options["dynamo_backend"] = str(backend).lower()
        labels["torch_compile"] = "dynamo_backend"
    elif "dynamo_backend" in fields:
        rows.append(Row("dynamo_backend", backend, label="dynamo_backend",
                        dropped="accelerate's default: nothing is compiled"))
    for key, default in keys.COMPILE_DEFAULTS.items():
        if key in fields:
            row = Row(key, fields[key], label=key)
            if fields[key] in (default, None):
                row.dropped = "torch.compile's default"
            else:
                row.refused = "not a run-file key: sdft compiles with torch.compile's defaults (memory.torch_compile)"
            rows.append(row)


def _launch(read: GuiRead) -> None:
    """accelerate launch's fields: several processes are `sdft train --gpus N`."""
    from engine.kohya.convert import Row

    fields, options, labels = read.fields, read.options, read.labels
    rows = [Row(key, fields[key], label=key, dropped=why) for key, why in keys.LAUNCH_NOTES.items() if key in fields]
    processes = fields.get("num_processes") or 1
    for key in ("num_processes", "multi_gpu"):
        if key in fields:
            several = int(processes) > 1 or bool(fields.get("multi_gpu"))
            rows.append(Row(key, fields[key], label=key, dropped=(
                f"run it with: sdft train RUN.toml --gpus {processes if int(processes) > 1 else 'N'}" if several
                else "one process, as sdft train runs")))
    if fields.get("use_wandb") and "log_with" not in options:
        options["log_with"] = "wandb"
        labels["log_with"] = "use_wandb"
    read.rows += rows


def _extra_options(read: GuiRead) -> None:
    """``additional_parameters``: more script options, typed; they win, as they follow the GUI's
    --config_file on kohya's command line."""
    import shlex

    from engine.kohya.convert import Row, parse_options

    text = read.fields.get("additional_parameters")
    if not text:
        if "additional_parameters" in read.fields:
            read.rows.append(Row("additional_parameters", None, label="additional_parameters", dropped=EMPTY))
        return
    extra, problems = parse_options(shlex.split(str(text)), read.script)
    read.options.update(extra)
    for name in extra:
        read.labels[name] = f"additional_parameters --{name}"
    for row in problems:
        row.label = f"additional_parameters --{row.option}"
    read.rows += problems


def _prompts(read: GuiRead) -> None:
    """The GUI holds the sample prompts' text (it writes them to a file for kohya): a list of them,
    or the file when the text names one."""
    text = read.fields.get("sample_prompts")
    if not text:
        read.options.pop("sample_prompts", None)
        return
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    named = Path(lines[0]) if len(lines) == 1 else None
    is_file = named is not None and named.suffix.lower() in (".txt", ".toml", ".json") and (
        named.is_file() or (read.base / named).is_file())
    read.options["sample_prompts"] = lines[0] if is_file else lines
    if not is_file:
        read.notes["sample_prompts"] = "the GUI's prompt text, one prompt a line"


def _warm_up(read: GuiRead) -> None:
    """``lr_warmup`` is a percentage of the steps; ``lr_warmup_steps`` above 0 wins (the GUI's rule)."""
    fields, options = read.fields, read.options
    steps = _number(fields.get("lr_warmup_steps"))
    percent = _number(fields.get("lr_warmup"))
    options.pop("lr_warmup_steps", None)
    if steps > 0:
        options["lr_warmup_steps"] = int(steps)
    elif percent:
        options["lr_warmup_steps"] = percent / 100
        read.labels["lr_warmup_steps"] = "lr_warmup"
        read.notes["lr_warmup_steps"] = f"the GUI's {percent:g} % of the steps"
    if "lr_warmup" in fields and (steps > 0 or not percent):
        from engine.kohya.convert import Row

        why = "lr_warmup_steps is given and wins (the GUI's rule)" if steps > 0 else "0 %: no warm-up"
        read.rows.append(Row("lr_warmup", fields["lr_warmup"], label="lr_warmup", dropped=why))


def _number(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


from engine.kohya.gui_data import data_fields, length  # noqa: E402 - the data fields' half

DERIVED = ("xformers", "dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
           "additional_parameters", "lr_warmup", "epoch", "num_processes", "multi_gpu",
           *keys.LAUNCH_NOTES, *keys.FINE_TUNE_KEYS)

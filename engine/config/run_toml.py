"""Load, validate and save run TOML files.

A run TOML describes a run completely. Loading reports every problem at once, each with
its dotted key, file:line and a hint. Saving edits the tomlkit document in place, so the
user's comments and key order survive and a no-op save is byte-identical.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, TypeVar

import tomlkit

from engine import atomic
from engine.config.fields import check_value
from engine.config.lines import key_lines
from engine.config.problems import ProblemList, current_spelling, did_you_mean
from engine.config.schema import CONFIG_VERSION, SECTIONS, RunConfig
from engine.user_files import file_problem

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from engine.config.dataset_specs import DatasetBlueprint
    from engine.config.problems import Problem

Section = TypeVar("Section", bound="DataclassInstance")
# What parsing a run file gives: the config, the tomlkit document (edited and saved back with
# its comments) and the problems found.
Parsed = tuple[RunConfig, tomlkit.TOMLDocument, list["Problem"]]

DATASET_KEYS = ("general", "datasets")
TOP_LEVEL_KEYS = ("config_version", "dataset_config", *DATASET_KEYS, *SECTIONS)

# kohya options we refuse on purpose, with the reason.
REJECTED_KEYS = {
    "dataset_class": "custom dataset classes are not supported; describe the data with [[datasets]] tables",
    "v_pred_like_loss": "kohya parses it but never applies it in fine_tune; remove it",
    "deepspeed": "use an accelerate config file for DeepSpeed (see README, Many GPUs)",
    # kohya keeps DataLoader worker processes alive between epochs; sdft's loader threads
    # always live for the whole run, so there is nothing to switch.
    "persistent_workers": "not needed: sdft's loader threads always live for the whole run; remove the key",
    "persistent_data_loader_workers": "not needed: sdft's loader threads always live for the whole run; "
                                      "remove the key",
}
REJECTED_PREFIXES = {
    "zero_": "use an accelerate config file for DeepSpeed ZeRO (see README, Many GPUs)",
    "huggingface_": "uploading to the Hugging Face hub is not part of sdft; upload the saved file yourself",
}


# ---------------------------------------------------------------- loading


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run TOML; raises ConfigError listing every problem."""
    config, _document, _warnings = load_run_file(path)
    return config


def load_run_file(path: str | Path) -> Parsed:
    """(RunConfig, tomlkit document, warnings) for a run TOML file."""
    from engine.config.toml_text import read_config_text

    path = Path(path)
    text, notes = read_config_text(path)
    return parse_run_text(text, file=str(path), base_dir=path.parent, notes=notes)


def parse_run_text(text: str, *, file: str = "<string>", base_dir: str | Path = ".",
                   notes: Iterable[Problem] = ()) -> Parsed:
    config, document, problems = collect_run_text(text, file=file, base_dir=base_dir, notes=notes)
    problems.raise_if_errors()
    warnings = [p for p in problems.items if p.severity != "error"]
    return config, document, warnings


def collect_run_text(text: str, *, file: str = "<string>", base_dir: str | Path = ".",
                     notes: Iterable[Problem] = ()) -> tuple[RunConfig, tomlkit.TOMLDocument, ProblemList]:
    """(RunConfig, document, ProblemList) without raising for schema errors: a bad value is left
    at its default, so later checks can run on the rest. ConfigError when the TOML cannot be parsed."""
    from engine.config.toml_text import parse_toml

    problems = ProblemList(file=file, items=list(notes))
    document = parse_toml(text, file)
    problems.line_of = key_lines(text)
    config = build_run_config(document.unwrap(), problems, base_dir=Path(base_dir))
    config.source_path = file
    return config, document, problems


def build_run_config(data: dict[str, Any], problems: ProblemList, *, base_dir: Path) -> RunConfig:
    """Turn plain TOML data into a RunConfig, recording every problem in ``problems``."""
    config = RunConfig(base_dir=str(base_dir))
    _check_version(data, problems)
    for key in data:
        if key in TOP_LEVEL_KEYS:
            continue
        reason = _rejection(key)
        if reason:
            problems.add(key, "this kohya option is not supported", reason)
        else:
            problems.add(key, "unknown top-level key", did_you_mean(key, TOP_LEVEL_KEYS))
    build_sections(config, data, problems)
    _check_cross_field(config, problems)
    config.datasets = _load_datasets(data, problems, base_dir)
    return config


def build_sections(config: RunConfig, data: dict[str, Any], problems: ProblemList) -> RunConfig:
    """Fill ``config``'s run tables ([model], [train], ...) from plain data; datasets untouched."""
    for name, cls in SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            problems.add(name, f"must be a table ([{name}]), got {type(table).__name__}", f"write it as [{name}] followed by key = value lines")
            continue
        setattr(config, name, _build_dataclass(cls, table, name, problems))
    return config


def _check_version(data: dict[str, Any], problems: ProblemList) -> None:
    version = data.get("config_version", CONFIG_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        problems.add("config_version", f"must be an integer, got {version!r}", f"use config_version = {CONFIG_VERSION}")
    elif version > CONFIG_VERSION:
        problems.add("config_version", f"{version} is newer than this sdft understands ({CONFIG_VERSION})", "upgrade sdft")
    elif version < 1:
        problems.add("config_version", f"{version} is not a valid version", f"use config_version = {CONFIG_VERSION}")


def _rejection(key: str) -> str | None:
    if key in REJECTED_KEYS:
        return REJECTED_KEYS[key]
    for prefix, reason in REJECTED_PREFIXES.items():
        if key.startswith(prefix):
            return reason
    return None


@functools.cache
def _schema_of(cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(type hints, fields) of a schema dataclass by name, worked out once per process: resolving
    the string annotations costs more than building a section, and every run file load builds each."""
    return typing.get_type_hints(cls), {f.name: f for f in fields(cls)}


def _build_dataclass(cls: type[Section], table: dict[str, Any], prefix: str, problems: ProblemList) -> Section:
    hints, known = _schema_of(cls)
    values: dict[str, Any] = {}
    for written, value in table.items():
        dotted = f"{prefix}.{written}"
        key = current_spelling(written, table, dotted, problems.add)
        if key is None:
            continue
        if key not in known:
            reason = _rejection(key)
            problems.add(dotted, "unknown key" if not reason else "this kohya option is not supported",
                         reason or did_you_mean(key, known))
            continue
        hint = hints[key]
        if isinstance(hint, type) and is_dataclass(hint):
            if not isinstance(value, dict):
                problems.add(dotted, f"must be a table, got {value!r}", f"write it as [{dotted}]")
                continue
            values[key] = _build_dataclass(hint, value, dotted, problems)
            continue
        value, problem = check_value(known[key], hint, value)
        if problem:
            problems.add(dotted, *problem)
            continue
        values[key] = value
    return cls(**values)


def _check_cross_field(config: RunConfig, problems: ProblemList) -> None:
    t, m, o = config.train, config.memory, config.optimizer
    for key in ("v2", "v_parameterization"):
        value = getattr(config.model, key)
        if not isinstance(value, bool) and value != "auto":
            problems.add(f"model.{key}", f'must be true, false or "auto", got {value!r}', "leave it \"auto\" to detect it")
    if config.data.use_train_resolution not in (True, False, "auto"):
        problems.add("data.use_train_resolution", f'must be true, false or "auto", got {config.data.use_train_resolution!r}')
    if t.min_timestep >= t.max_timestep and not (t.min_timestep == t.max_timestep <= 999):
        problems.add("train.max_timestep", f"must be above min_timestep ({t.min_timestep}), got {t.max_timestep}",
                     "timesteps are drawn from [min_timestep, max_timestep)")
    if m.full_fp16 and m.full_bf16:
        problems.add("memory.full_bf16", "full_fp16 and full_bf16 cannot both be on", "choose one")
    if m.full_fp16 and m.mixed_precision != "fp16":
        problems.add("memory.full_fp16", "needs mixed_precision = \"fp16\"", 'set memory.mixed_precision = "fp16"')
    if m.full_bf16 and m.mixed_precision != "bf16":
        problems.add("memory.full_bf16", "needs mixed_precision = \"bf16\"", 'set memory.mixed_precision = "bf16"')
    _check_fused_backward(config, problems)
    _check_sharding(config, problems)
    if t.ddp_static_graph and t.stop_text_encoder_training:
        problems.add("train.ddp_static_graph", "cannot stay static: train.stop_text_encoder_training freezes the "
                     "text encoder mid-run, which changes the graph DDP was told never changes",
                     "remove one of the two")
    if isinstance(o.lr_warmup_steps, float) and not o.lr_warmup_steps < 1:
        problems.add("optimizer.lr_warmup_steps", f"a fractional warm-up must be below 1, got {o.lr_warmup_steps}",
                     "use an integer number of steps, or a ratio such as 0.05")
    if config.model.clip_skip > 1 and config.model.v2 is True:
        problems.warn("model.clip_skip", "SD 2.x's text tower already ends one layer early; clip_skip > 1 skips further",
                      "kohya's docs advise leaving clip_skip unset for SD 2.x")
    if t.zero_terminal_snr and config.model.v_parameterization is False:
        problems.warn("train.zero_terminal_snr", "zero terminal SNR without v-prediction cannot learn the final step",
                      "use it with a v-prediction model")
    if t.scale_v_pred_loss_like_noise_pred and config.model.v_parameterization is False:
        problems.add("train.scale_v_pred_loss_like_noise_pred", "only applies to v-prediction models",
                     "remove it, or set model.v_parameterization = true")
    prompts = config.sample.prompts
    if isinstance(prompts, str) and not Path(config.resolve(prompts)).exists():
        problems.add("sample.prompts", f"prompts file {prompts!r} not found (looked beside this file and in the "
                     "current folder)", "give a .txt/.toml/.json file, or an inline list: prompts = [\"a cat --w 512\"]")
    elif isinstance(prompts, str) and (refused := file_problem(config.resolve(prompts), "prompts file")):
        problems.add("sample.prompts", *refused)
    if t.mode == "hypernetwork" and t.train_text_encoder:
        problems.add("train.train_text_encoder", "hypernetwork mode keeps the text encoder frozen",
                     'set train_text_encoder = false or train.mode = "full"')


def _check_fused_backward(config: RunConfig, problems: ProblemList) -> None:
    """What a fused backward pass cannot do (engine/train/weight_update.py says why each)."""
    from engine.registry.optimizers import find

    if not config.memory.fused_backward_pass:
        return
    key, t, m = "memory.fused_backward_pass", config.train, config.memory
    if t.gradient_accumulation_steps > 1:
        problems.add(key, "cannot accumulate gradients: each weight is stepped as soon as its gradient is "
                     "ready, so the gradients of several micro-batches would all have to be kept, and the pass "
                     "would save nothing", "set train.gradient_accumulation_steps = 1 (raise the batch size "
                     "instead), or turn the fused backward pass off")
    if m.mixed_precision == "fp16":
        problems.add(key, "cannot run with fp16: fp16's gradient scaler skips a whole step when any gradient "
                     "overflows, and here weights are already stepped before the last gradient exists",
                     'use mixed_precision = "bf16" (or "no"), or turn the fused backward pass off')
    entry = find(config.optimizer.type)
    if entry is None or not entry.per_parameter:
        problems.add(key, f"needs an optimizer that updates each weight from its own gradient alone; "
                     f"{config.optimizer.type} looks across all weights in each step",
                     "use AdamW, AdamW8bit, Adafactor, Lion or SGDNesterov (or their 8-bit and paged "
                     "versions)")


def _check_sharding(config: RunConfig, problems: ProblemList) -> None:
    """What sharded training (memory.sharding, engine/train/sharding.py) cannot do yet, with why."""
    from engine.registry.optimizers import find

    m, key = config.memory, "memory.sharding"
    if m.sharding == "none":
        return
    reasons = []
    if m.mixed_precision == "fp16":
        reasons.append(("fp16's gradient scaler does not work on shards", 'use mixed_precision = "bf16" (or "no")'))
    if m.full_bf16:
        reasons.append(("bf16 weights are written back with stochastic rounding, which does not work on shards "
                        "yet", "keep fp32 weights: the optimizer states and gradients are sharded anyway"))
    if m.fused_backward_pass:
        reasons.append(("the fused backward pass steps a weight before its gradient is reduced across GPUs",
                        "turn one of them off"))
    entry = find(config.optimizer.type)
    if entry is not None and entry.package == "bitsandbytes":
        reasons.append((f"{entry.name}'s kernels take whole tensors, not shards",
                        "use AdamW, Adafactor, Lion or SGDNesterov: their states are sharded too"))
    if config.train.mode == "hypernetwork":
        reasons.append(("a hypernetwork is small: there is nothing worth sharding", 'set memory.sharding = "none"'))
    if config.train.ema and config.train.ema_cpu_offload:
        reasons.append(("the average of sharded weights stays sharded on the GPUs (each holds its share)",
                        "remove train.ema_cpu_offload"))
    for message, hint in reasons:
        problems.add(key, message, hint)


def _load_datasets(data: dict[str, Any], problems: ProblemList, base_dir: Path) -> DatasetBlueprint | None:
    from engine.config import dataset

    has_inline = any(key in data for key in DATASET_KEYS)
    reference = data.get("dataset_config")
    if reference is not None and has_inline:
        problems.add("dataset_config", "given together with inline [general]/[[datasets]] tables",
                     "keep one: the dataset_config file or the inline tables")
        return None
    if reference is not None:
        if not isinstance(reference, str):
            problems.add("dataset_config", f"must be a path string, got {reference!r}")
            return None
        path = Path(reference)
        if not path.is_absolute():
            path = base_dir / path if (base_dir / path).exists() else Path.cwd() / path
        if problems.file and path.exists() and path.resolve() == Path(problems.file).resolve():
            problems.add("dataset_config", f"names this run file itself ({reference!r})",
                         "point it at a kohya dataset TOML, or delete it and put [general] / [[datasets]] "
                         "tables in this file")
            return None
        return dataset.load_dataset_file(path, problems)
    if not has_inline:
        problems.add("datasets", "no dataset given", "add [[datasets]] with [[datasets.subsets]] tables, or dataset_config = \"file.toml\"")
        return None
    tables = {key: data[key] for key in DATASET_KEYS if key in data}
    return dataset.parse_dataset_tables(tables, problems=problems, base_dir=base_dir)


# ---------------------------------------------------------------- saving


def load_document(path: str | Path) -> tomlkit.TOMLDocument:
    from engine.config.toml_text import parse_toml, read_config_text

    text, _notes = read_config_text(path)
    return parse_toml(text, str(path))


def set_value(document: tomlkit.TOMLDocument, dotted: str, value: object) -> None:
    """Set ``a.b.c`` in a tomlkit document, creating tables; keeps comments elsewhere."""
    parts = dotted.split(".")
    table = document
    for part in parts[:-1]:
        if part not in table:
            table[part] = tomlkit.table()
        table = table[part]
    if value is None:
        if parts[-1] in table:
            del table[parts[-1]]
        return
    if parts[-1] in table and table[parts[-1]] == value:
        return  # unchanged: keep the original text (and its formatting) byte for byte
    table[parts[-1]] = value


def save_document(document: tomlkit.TOMLDocument, path: str | Path) -> None:
    """Write a tomlkit document atomically; an unedited document round-trips byte-identical."""
    atomic.write_text(path, tomlkit.dumps(document))


def dump_document(document: tomlkit.TOMLDocument) -> str:
    return tomlkit.dumps(document)

"""kohya's option values in sdft's spelling: optimizer, scheduler and sampler names, ``k=v``
argument lists, resolutions. sdft's own names come from the schema's choices."""

from __future__ import annotations

from dataclasses import fields


class KohyaValueError(ValueError):
    """A value sdft cannot take as it is; the message says what to do."""


def schema_choices(dotted: str) -> tuple:
    from engine.config.schema import SECTIONS

    section, name = dotted.split(".", 1)
    field = next(f for f in fields(SECTIONS[section]) if f.name == name)
    return tuple(c for c in field.metadata["choices"] if c is not None)


def _pick(value: str, dotted: str, aliases: dict[str, str], what: str) -> str:
    """kohya matches these names case-insensitively; sdft's choice of the same name, or a refusal."""
    wanted = aliases.get(value.lower(), value.lower())
    for choice in schema_choices(dotted):
        if choice.lower() == wanted:
            return choice
    raise KohyaValueError(f"the {what} {value!r} is not in sdft yet; sdft has: {', '.join(schema_choices(dotted))}")


def optimizer_name(value: str) -> str:
    """kohya's --optimizer_type in sdft's spelling (engine/registry/optimizers.py, any case, as
    kohya matches it); a name kohya looks up in torch.optim becomes torch.optim.NAME, module.Class
    stays as it is."""
    from engine.registry.optimizers import DEFAULT, find, is_class_path

    if not value:
        return DEFAULT   # kohya's default when --optimizer_type is empty
    entry = find(value)
    if entry is not None:
        return entry.name
    if is_class_path(value):
        return value
    if value.isidentifier():
        return f"torch.optim.{value}"
    raise KohyaValueError(f"the optimizer {value!r} is neither one of kohya's names nor module.Class")


def scheduler_name(value: str) -> str:
    return _pick(value, "optimizer.lr_scheduler", {}, "learning-rate schedule")


def sampler_name(value: str) -> str:
    """Every kohya sampler (engine/registry/samplers.py); a k_ name becomes its plain spelling,
    which builds the same scheduler."""
    from engine.registry.samplers import sampler_entry

    try:
        return sampler_entry(value).name
    except ValueError as exc:
        raise KohyaValueError(str(exc)) from None


def parse_key_values(items, option: str) -> dict:
    """kohya's ``["weight_decay=0.01", "betas=0.9,0.999"]`` as a table (engine/config/key_values.py,
    which reads the run file's lists too)."""
    from engine.config.key_values import parse_key_values as parse

    try:
        return parse(items, option)
    except ValueError as exc:
        raise KohyaValueError(str(exc)) from None


def parse_resolution(value) -> int | list[int]:
    """``"512"`` or ``"512,768"`` (kohya's width,height) as the dataset table writes it."""
    if isinstance(value, (int, list)):
        return value
    parts = [p.strip() for p in str(value).split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise KohyaValueError(f"{value!r} is not a resolution (512 or 512,768)") from None
    if len(numbers) == 1 or numbers[0] == numbers[1]:
        return numbers[0]
    return numbers[:2]


def parse_pair(value, option: str) -> list[float]:
    if isinstance(value, list):
        return value
    try:
        low, high = (float(p) for p in str(value).split(","))
    except ValueError:
        raise KohyaValueError(f"{option}: {value!r} is not two numbers like 0.4,1.0") from None
    return [low, high]

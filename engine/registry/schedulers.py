"""Learning-rate schedules a run can name: ``optimizer.lr_scheduler`` (no torch here).

Each entry: kohya's name, the library whose schedule function ``engine/train/lr_schedules.py``
calls (the classic six and piecewise_constant from diffusers, as sdft always built them; the
three kohya added later from transformers, as kohya takes them), and the options it takes from
``[optimizer]`` keys (``engine/train/lr_schedules.py`` maps them; ``engine/preflight/inert.py``
refuses the keys a schedule does not take). ``adafactor`` is transformers' ``AdafactorSchedule``,
which only reports the step size Adafactor picks itself (``relative_step = true``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleEntry:
    name: str
    source: str                 # "diffusers" | "transformers"
    options: tuple[str, ...]    # keyword arguments filled from [optimizer] keys
    doc: str = ""


_WARM = ("num_warmup_steps",)
_WARM_TOTAL = ("num_warmup_steps", "num_training_steps")

SCHEDULES: tuple[ScheduleEntry, ...] = (
    ScheduleEntry("constant", "diffusers", ()),
    ScheduleEntry("constant_with_warmup", "diffusers", _WARM),
    ScheduleEntry("linear", "diffusers", _WARM_TOTAL),
    ScheduleEntry("cosine", "diffusers", _WARM_TOTAL),
    ScheduleEntry("cosine_with_restarts", "diffusers", _WARM_TOTAL + ("num_cycles",)),
    ScheduleEntry("polynomial", "diffusers", _WARM_TOTAL + ("power",)),
    ScheduleEntry("piecewise_constant", "diffusers", ()),
    ScheduleEntry("inverse_sqrt", "transformers", _WARM + ("timescale",)),
    ScheduleEntry("cosine_with_min_lr", "transformers", _WARM_TOTAL + ("num_cycles", "min_lr_rate")),
    ScheduleEntry("warmup_stable_decay", "transformers",
                  _WARM + ("num_stable_steps", "num_decay_steps", "num_cycles", "min_lr_ratio")),
    ScheduleEntry("adafactor", "transformers", (),
                  doc="only with optimizer.type = Adafactor and relative_step = true"),
)

NAMES: tuple[str, ...] = tuple(s.name for s in SCHEDULES)
DEFAULT = "constant"
_BY_NAME = {s.name: s for s in SCHEDULES}


def find(name: str) -> ScheduleEntry | None:
    return _BY_NAME.get(name)


def names_from(source: str) -> tuple[str, ...]:
    return tuple(s.name for s in SCHEDULES if s.source == source)


def options_of(name: str) -> tuple[str, ...]:
    """The [optimizer]-key options schedule ``name`` takes (none for an unknown name)."""
    entry = _BY_NAME.get(name)
    return entry.options if entry else ()


__all__ = ["DEFAULT", "NAMES", "SCHEDULES", "ScheduleEntry", "find", "names_from", "options_of"]

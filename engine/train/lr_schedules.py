"""Learning-rate schedules, built as kohya's ``get_scheduler_fix`` builds them.

Each schedule takes some of the ``[optimizer]`` keys (warm-up, cycles, power, decay steps, the
minimum-LR ratio, the timescale); ``lr_scheduler_args`` add any other keyword the schedule
function takes. The classic six come from diffusers (what sdft always used, so their numbers are
unchanged); piecewise_constant from diffusers too; inverse_sqrt, cosine_with_min_lr and
warmup_stable_decay from transformers, as kohya takes them. kohya halves num_cycles for the last
two (their cosine counts half-waves); so does sdft. The names and the options each takes are in
engine/registry/schedulers.py.

Two optimizers decide the schedule, as in kohya: Adafactor with ``relative_step`` picks its own
step size, which transformers' ``AdafactorSchedule`` (``lr_scheduler = "adafactor"``) only reports;
a schedule-free optimizer has none (``constant`` only; its warm-up is its own ``warmup_steps``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from engine.registry.schedulers import NAMES as SCHEDULERS
from engine.registry.schedulers import names_from, options_of

DIFFUSERS = names_from("diffusers")
TRANSFORMERS = names_from("transformers")

# The [optimizer] key behind each option (lr_scheduler_args must not set them too).
OPTION_KEYS = {"num_warmup_steps": "lr_warmup_steps", "num_training_steps": "max_train_steps",
               "num_cycles": "lr_scheduler_num_cycles", "power": "lr_scheduler_power",
               "timescale": "lr_scheduler_timescale", "num_decay_steps": "lr_decay_steps",
               "num_stable_steps": "lr_decay_steps", "min_lr_rate": "lr_scheduler_min_lr_ratio",
               "min_lr_ratio": "lr_scheduler_min_lr_ratio"}


@dataclass(frozen=True)
class ScheduleInputs:
    """The [optimizer] keys a schedule reads, with the run's total steps."""

    total_steps: int
    warmup: int | float = 0
    num_cycles: int = 1
    power: float = 1.0
    decay: int | float = 0
    min_lr_ratio: float | None = None
    timescale: int | None = None
    initial_lr: float = 0.0    # what the adafactor schedule reports before Adafactor's first step

    @classmethod
    def of(cls, optimizer_config, total_steps: int) -> ScheduleInputs:
        o = optimizer_config
        return cls(total_steps, o.lr_warmup_steps, o.lr_scheduler_num_cycles, o.lr_scheduler_power,
                   o.lr_decay_steps, o.lr_scheduler_min_lr_ratio, o.lr_scheduler_timescale, o.learning_rate)


class ScheduleMismatch(ValueError):
    """The schedule does not go with the optimizer (optimizer.lr_scheduler is the key to change)."""


def steps_of(value: int | float, total_steps: int) -> int:
    """An int is a step count; a float below 1 is a ratio of the total (warm-up, decay)."""
    if isinstance(value, float) and value < 1:
        return int(value * total_steps)
    return int(value)


def _function(name: str):
    if name in DIFFUSERS:
        from diffusers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType
    else:
        from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType
    return TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]


def scheduler_arg_names(name: str) -> list[str]:
    """The keys ``optimizer.lr_scheduler_args`` may hold for schedule ``name``."""
    params = inspect.signature(_function(name)).parameters
    if name == "adafactor":
        return ["initial_lr"]   # what it reports before Adafactor's first step (default: learning_rate)
    taken = set(options_of(name))
    if name == "cosine_with_min_lr":
        taken.add("min_lr")   # the floor is given as a ratio (lr_scheduler_min_lr_ratio), as kohya does
    return [p for p in params if p != "optimizer" and p not in taken]


def _options(name: str, given: ScheduleInputs) -> dict:
    total = given.total_steps
    warmup = steps_of(given.warmup, total)
    decay = steps_of(given.decay, total)
    if name == "cosine_with_min_lr" and given.min_lr_ratio is None:
        raise ValueError("the cosine_with_min_lr schedule needs optimizer.lr_scheduler_min_lr_ratio "
                         "(the floor as a fraction of the learning rate, e.g. 0.1)")
    if name == "warmup_stable_decay" and warmup + decay > total:
        raise ValueError(f"optimizer.lr_warmup_steps ({warmup}) + optimizer.lr_decay_steps ({decay}) are more "
                         f"than the run's {total} steps")
    values = {"num_warmup_steps": warmup, "num_training_steps": total, "power": given.power,
              "num_cycles": given.num_cycles / 2 if name in TRANSFORMERS else given.num_cycles,
              "timescale": given.timescale, "num_decay_steps": decay, "num_stable_steps": total - warmup - decay,
              "min_lr_rate": given.min_lr_ratio, "min_lr_ratio": given.min_lr_ratio or 0.0}
    return {key: values[key] for key in options_of(name)}


def build_scheduler(name: str, optimizer, given: ScheduleInputs, args: dict | None = None):
    """A LambdaLR-style schedule over exactly ``given.total_steps`` optimizer steps.

    ``args`` (``optimizer.lr_scheduler_args``) go to the schedule function as keyword arguments,
    as in kohya: e.g. ``{ lr_end = 1e-7 }`` for polynomial, ``{ step_rules = "1:10,0.1" }`` for
    piecewise_constant. A key the schedule does not take is a ValueError naming the valid ones.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if name == "adafactor":
        return _adafactor_schedule(optimizer, given, args or {})
    kwargs = _options(name, given)
    valid = scheduler_arg_names(name)
    for key, value in (args or {}).items():
        if key in kwargs:
            raise ValueError(f"optimizer.lr_scheduler_args: {key} is set by optimizer.{OPTION_KEYS[key]}; "
                             "set it there instead")
        if key not in valid:
            raise ValueError(f"optimizer.lr_scheduler_args: the {name} schedule has no option {key!r}; "
                             f"its options: {', '.join(valid)}")
        kwargs[key] = value
    try:
        return _function(name)(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"optimizer.lr_scheduler_args do not fit the {name} schedule: {exc!r}") from None


def _adafactor_schedule(optimizer, given: ScheduleInputs, args: dict):
    from transformers.optimization import AdafactorSchedule

    from engine.train.optimizers import uses_relative_step

    if not uses_relative_step(optimizer):
        raise ScheduleMismatch('the adafactor schedule reports the step size Adafactor picks itself: it needs '
                               'optimizer.type = "Adafactor" with optimizer.args relative_step = true')
    unknown = set(args) - {"initial_lr"}
    if unknown:
        raise ValueError(f"optimizer.lr_scheduler_args: the adafactor schedule has no option {sorted(unknown)[0]!r}; "
                         "its options: initial_lr")
    return AdafactorSchedule(optimizer, args.get("initial_lr", given.initial_lr))


def custom_scheduler(type_name: str, optimizer, args: dict | None = None):
    """``lr_scheduler_type``, as kohya reads it: a class of torch.optim.lr_scheduler, or
    ``module.Class``, called with the optimizer and ``lr_scheduler_args``."""
    import importlib

    module_name, _, class_name = type_name.rpartition(".")
    try:
        module = importlib.import_module(module_name or "torch.optim.lr_scheduler")
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"optimizer.lr_scheduler_type: cannot find {type_name!r} ({exc}); give a "
                         "torch.optim.lr_scheduler class name or module.Class") from None
    try:
        return cls(optimizer, **(args or {}))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"optimizer.lr_scheduler_args do not fit {type_name}: {exc}") from None


def schedule_name(optimizer_config, optimizer) -> str | None:
    """The schedule a run uses: its lr_scheduler, the one its optimizer forces (kohya's rules), or
    None for an lr_scheduler_type class."""
    from engine.train.optimizers import has_train_mode, uses_relative_step

    o = optimizer_config
    name = o.lr_scheduler_type or o.lr_scheduler
    what = type(getattr(optimizer, "optimizer", optimizer)).__name__
    if has_train_mode(optimizer) and name != "constant":
        raise ScheduleMismatch(f"{what} is schedule-free: it takes no learning-rate schedule (kohya ignores "
                               f"{name!r}); remove it, and give a warm-up as optimizer.args warmup_steps")
    if uses_relative_step(optimizer):
        if name not in ("constant", "adafactor") or o.lr_scheduler_type:
            raise ScheduleMismatch(f"Adafactor with relative_step picks its own step size: the {name!r} schedule "
                                   'cannot act on it; set optimizer.lr_scheduler = "adafactor" (kohya switches to '
                                   "it), or relative_step = false for a schedule of your own")
        return "adafactor"   # constant (the default) means "unset" here, as kohya replaces it
    return None if o.lr_scheduler_type else name


def schedule_for(optimizer_config, optimizer, total_steps: int):
    """The run's schedule from its [optimizer] table (training and --check build it this way)."""
    o = optimizer_config
    name = schedule_name(o, optimizer)
    if o.lr_scheduler_type:
        return custom_scheduler(o.lr_scheduler_type, optimizer, o.lr_scheduler_args)
    return build_scheduler(name, optimizer, ScheduleInputs.of(o, total_steps), o.lr_scheduler_args)

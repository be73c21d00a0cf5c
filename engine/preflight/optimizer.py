"""``--check`` of the [optimizer] table: the optimizer and its schedule built as training builds
them (engine/train/optimizers.py, lr_schedules.py) on one dummy parameter and stepped once, with
what kohya's ``get_optimizer`` says about the same choices (engine/registry/optimizers.py).

torch is imported inside the check only: the wizard imports this module before training.
"""

from __future__ import annotations

import importlib.util

from engine.config.problems import ProblemList
from engine.registry.optimizers import find, needs_package


def check_optimizer(config, problems: ProblemList, device, total_steps: int) -> None:
    """Build the optimizer and schedule on one dummy parameter and step once."""
    import torch

    o = config.optimizer
    on = device if device is not None else torch.device("cpu")
    param = torch.nn.Parameter(torch.zeros(8, device=on))
    optimizer = _built_optimizer(o, problems, param, on.type)
    if optimizer is None:   # the schedule is still checked, on a plain optimizer
        optimizer = torch.optim.SGD([param], lr=o.learning_rate)
    _check_schedule(o, problems, optimizer, total_steps)
    _say_what_the_optimizer_does(o, problems, on.type, optimizer)


def _built_optimizer(o, problems: ProblemList, param, device_type: str):
    import torch

    from engine.train.optimizers import OptionalPackageMissing, build_optimizer

    package = needs_package(o.type)
    if package and importlib.util.find_spec(package[0]) is None:
        return None   # reported by the package check, with its pip command
    try:
        optimizer = build_optimizer(o.type, [{"params": [param], "lr": o.learning_rate}], o.learning_rate,
                                    o.args, device_type)
        param.grad = torch.full_like(param, 0.01)
        optimizer.step()
        return optimizer
    except OptionalPackageMissing as exc:
        problems.add("optimizer.type", str(exc), "give module.Class of an installed package, or one of sdft's "
                     "names (docs/run-file.md, [optimizer])")
    except Exception as exc:  # noqa: BLE001 - any failure here is a failure at training start
        guilty = _guilty_arguments(o, param, device_type)
        for name in guilty:
            value = o.args[name]
            problems.add(f"optimizer.args.{name}", f"{o.type} cannot be built with {name} = {value!r} "
                         f"({type(value).__name__}): {exc}", _argument_hint(value))
        if not guilty:
            problems.add("optimizer.args", f"{o.type} cannot be built with these arguments: {exc}",
                         "optimizer.args holds the optimizer's keyword arguments, e.g. { weight_decay = 0.01 }")
    return None


def _guilty_arguments(o, param, device_type: str) -> list[str]:
    """The arguments of ``optimizer.args`` that fail on their own (each tried alone on the dummy
    parameter), so a wrong-typed one is named instead of only the class's complaint."""
    import torch

    from engine.train.optimizers import build_optimizer

    guilty = []
    for name, value in (o.args or {}).items():
        try:
            optimizer = build_optimizer(o.type, [{"params": [param], "lr": o.learning_rate}], o.learning_rate,
                                        {name: value}, device_type)
            param.grad = torch.full_like(param, 0.01)
            optimizer.step()
        except Exception:  # noqa: BLE001 - this argument alone breaks it
            guilty.append(name)
    return guilty


def _argument_hint(value) -> str:
    if isinstance(value, str):
        return "a number or true/false is written without quotes, e.g. weight_decay = 0.01"
    if isinstance(value, list):
        return "a pair is written as a list of numbers, e.g. betas = [0.9, 0.999]"
    return "the value the optimizer's class takes for this argument (its documentation lists them)"


def _check_schedule(o, problems: ProblemList, optimizer, total_steps: int) -> None:
    from engine.train.lr_schedules import ScheduleMismatch, schedule_for

    try:
        scheduler = schedule_for(o, optimizer, total_steps)
    except ScheduleMismatch as exc:
        problems.add("optimizer.lr_scheduler", str(exc))
        return
    except Exception as exc:  # noqa: BLE001
        problems.add("optimizer.lr_scheduler_args", str(exc).removeprefix("optimizer.lr_scheduler_args: "),
                     f"the {o.lr_scheduler} schedule's keyword arguments")
        return
    try:
        optimizer.step()   # at the learning rate the schedule gives the first step
        scheduler.step()
    except Exception as exc:  # noqa: BLE001 - the optimizer's own step fails there
        _report_step_failure(o, problems, optimizer, exc)


def _report_step_failure(o, problems: ProblemList, optimizer, exc: Exception) -> None:
    """The optimizer fails at a step of the schedule: name the cause. D-Adaptation's SGD divides by
    the learning rate's share of the gradient, so it breaks when a warm-up starts at 0."""
    failure = f"{type(exc).__name__}: {exc}"
    at_zero = all(group["lr"] == 0 for group in optimizer.param_groups)
    if at_zero and o.lr_warmup_steps:
        problems.add("optimizer.lr_warmup_steps", f"{o.type} fails when its learning rate is 0, as the "
                     f"{o.lr_scheduler} schedule's warm-up makes it at the first step ({failure}, inside the "
                     "optimizer's package; kohya's runs stop there the same way)",
                     f"{o.type} sets its own step size and needs no warm-up: use lr_warmup_steps = 0, or an "
                     "optimizer that takes a warm-up (DAdaptAdam, Prodigy)")
    else:
        problems.add("optimizer.type", f"{o.type} fails at the first step of the {o.lr_scheduler} schedule: "
                     f"{failure}", "choose another optimizer or schedule")


def _say_what_the_optimizer_does(o, problems: ProblemList, device_type: str, optimizer) -> None:
    """kohya's advice on the same choices, and what a CPU does with a paged optimizer."""
    from engine.train.optimizers import uses_relative_step

    entry = find(o.type)
    if entry is None:
        return
    _check_usual_learning_rate(o, problems, entry, optimizer)
    if entry.adaptive_lr and o.learning_rate <= 0.1:
        problems.warn("optimizer.learning_rate", f"{entry.name} finds its own step size and multiplies it by "
                      f"learning_rate = {o.learning_rate:g}, which makes it tiny",
                      "set optimizer.learning_rate = 1.0 (kohya's advice for D-Adaptation and Prodigy)")
    if entry.paged and device_type != "cuda":
        problems.warn("optimizer.type", f"{entry.name} pages its states between GPU and CPU memory; on a CPU "
                      "there is nothing to page: bitsandbytes runs it as the unpaged optimizer",
                      "fine for a test run; on a GPU it pages")
    if uses_relative_step(optimizer) and o.lr_scheduler == "constant" and not o.lr_scheduler_type:
        problems.add("optimizer.lr_scheduler", "Adafactor with relative_step picks its own step size: the "
                     "adafactor schedule reports it (kohya switches to it the same way)",
                     'write optimizer.lr_scheduler = "adafactor" to say so', "note")


def _check_usual_learning_rate(o, problems: ProblemList, entry, optimizer) -> None:
    """A learning rate outside the optimizer's usual range (engine/registry/optimizers.py): above it
    a run diverges, below it nothing is learned (an adaptive optimizer's low end is said above)."""
    from engine.train.optimizers import uses_relative_step

    if entry.lr_range is None or uses_relative_step(optimizer):
        return
    low, high = entry.lr_range
    for key, lr in (("optimizer.learning_rate", o.learning_rate), ("optimizer.learning_rate_te", o.learning_rate_te)):
        if lr is None:
            continue
        if lr > high:
            problems.warn(key, f"{lr:g} is above {entry.name}'s usual range ({low:g} to {high:g}): the run is "
                          "likely to diverge (sdft stops it at the first NaN)", f"SD fine-tunes use 1e-6 to 2e-5 "
                          f"with Adam-type optimizers; try {min(high, 1e-5) if not entry.adaptive_lr else 1.0:g}")
        elif lr < low and not entry.adaptive_lr:
            problems.warn(key, f"{lr:g} is below {entry.name}'s usual range ({low:g} to {high:g}): the weights "
                          "will barely change", "SD fine-tunes use 1e-6 to 2e-5 with Adam-type optimizers")

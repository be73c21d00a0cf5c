"""Optimizers, built by name from the registry (engine/registry/optimizers.py).

Each builder is ``(entry, param_groups, lr, args, device_type) -> torch.optim.Optimizer`` and
follows kohya-ss/sd-scripts' ``get_optimizer`` for its defaults. Optional packages are imported
only when chosen; a missing one says what to install. ``optimizer.args`` are the class's keyword
arguments (a table, or kohya's ``["key=value", ...]`` list, read by engine/config/key_values.py).
"""

from __future__ import annotations

import functools
import importlib
from contextlib import contextmanager
from typing import Iterable

import torch

from engine.registry.optimizers import OptimizerEntry, entry_for


class OptionalPackageMissing(RuntimeError):
    pass


def import_class(path: str, purpose: str, install: str | None = None):
    """``module.Class`` imported; a module that will not import is OptionalPackageMissing."""
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        how = f"Install it with: {install}" if install else "check the name and that its package is installed"
        raise OptionalPackageMissing(f"{purpose} needs the module '{module_name}', which cannot be imported: "
                                     f"{exc}. {how}") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        hint = " (an older version? upgrade it: " + install + ")" if install else ""
        raise OptionalPackageMissing(f"{purpose}: the module '{module_name}' has no {class_name}{hint}") from None


def _class(entry: OptimizerEntry):
    return import_class(entry.cls, f"The {entry.name} optimizer", entry.install)


def with_class(entry, groups, lr, args, device_type):
    """The entry's class, called as kohya calls it: ``cls(params, lr=lr, **args)``."""
    return _class(entry)(groups, lr=lr, **args)


def custom_class(entry, groups, lr, args, device_type):
    """``optimizer.type = "module.Class"``: any optimizer class, as kohya's ``--optimizer_type``."""
    return import_class(entry.cls, f"optimizer.type = {entry.name!r}")(groups, lr=lr, **args)


def adamw(entry, groups, lr, args, device_type):
    """torch's AdamW, fused on CUDA and on the CPU unless the args choose: one kernel walks every
    tensor instead of a dozen ops per tensor, each allocating its temporaries. On the CPU that is
    the step's largest saving against kohya's default AdamW (README, Performance); the update
    matches the per-tensor one to float rounding (tests/test_speed_options.py)."""
    if device_type in ("cuda", "cpu") and "fused" not in args and "foreach" not in args:
        args = {**args, "fused": True}
    return torch.optim.AdamW(groups, lr=lr, **args)


def nesterov(entry, groups, lr, args, device_type):
    """SGD (torch's or bitsandbytes' 8-bit) with Nesterov momentum: 0.9 unless given, as kohya."""
    return _class(entry)(groups, lr=lr, nesterov=True, **{"momentum": 0.9, **args})


def adafactor(entry, groups, lr, args, device_type):
    """transformers' Adafactor. sdft's defaults are a fixed step size (relative_step, scale_parameter
    and warmup_init off; kohya's default is relative_step on, which sdft from-kohya writes out).
    warmup_init turns relative_step on, as in kohya; with relative_step Adafactor picks its own step
    size, so no learning rate reaches it and the adafactor schedule reports it (lr_schedules.py)."""
    from transformers.optimization import Adafactor

    args = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **args}
    if args["warmup_init"]:
        args["relative_step"] = True
    if args["relative_step"]:
        groups = [{k: v for k, v in g.items() if k != "lr"} for g in groups]
        lr = None
    return Adafactor(groups, lr=lr, **args)


def _builder(entry: OptimizerEntry):
    module, _, function = entry.builder.partition(":")
    return getattr(importlib.import_module(module), function)


def build_optimizer(name: str, param_groups: Iterable[dict], lr: float, args: dict | None = None,
                    device_type: str = "cpu") -> torch.optim.Optimizer:
    """Optimizer ``name`` (any case, or ``module.Class``) over ``param_groups``; schedule-free
    ones start in train mode, as kohya starts them."""
    entry = entry_for(name)
    try:
        optimizer = _builder(entry)(entry, list(param_groups), lr, dict(args or {}), device_type)
    except TypeError as exc:
        raise ValueError(f"optimizer.args do not fit {entry.name}: {exc}") from None
    set_train_mode(optimizer, True)
    return optimizer


def uses_relative_step(optimizer) -> bool:
    """Adafactor picking its own step size (it then needs the adafactor schedule)."""
    inner = getattr(optimizer, "optimizer", optimizer)   # accelerate wraps it
    return type(inner).__name__ == "Adafactor" and bool(inner.defaults.get("relative_step"))


def has_train_mode(optimizer) -> bool:
    """Schedule-free optimizers hold two sets of weights: train() for steps, eval() for using them."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None))


def set_train_mode(optimizer, train: bool) -> None:
    if has_train_mode(optimizer):
        inner = getattr(optimizer, "optimizer", optimizer)
        inner.train() if train else inner.eval()


@contextmanager
def evaluation_weights(optimizer):
    """The weights to sample with or save: a schedule-free optimizer's eval() weights inside,
    back to train() after (kohya switches around sampling and saving the same way)."""
    set_train_mode(optimizer, False)
    try:
        yield
    finally:
        set_train_mode(optimizer, True)


def with_evaluation_weights(method):
    """For a method of a step hook holding ``self.parts`` (RunParts): it runs with the optimizer's
    evaluation weights (sampling, saving a model or a state)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with evaluation_weights(self.parts.bundle.optimizer):
            return method(self, *args, **kwargs)
    return wrapper

"""Optimizers a run can name: ``optimizer.type``, one entry each (no torch here).

An entry says what the name builds (``builder``, a ``module:function`` resolved only when a run
builds it, and ``cls`` for the builders that take a class), which optional package it needs and
how to install it, and what the VRAM planner needs (optimizer-state bytes per trained parameter,
whether the step makes a temporary copy of every parameter). The schema's choices, ``--check``'s
package check, the planner, the wizard's select and ``sdft from-kohya`` all read this table, so a
new optimizer is one entry here plus its builder function in ``engine/train/optimizers.py`` (if
none of the builders there fits).

Names are matched without regard to case, as kohya-ss/sd-scripts matches ``--optimizer_type``;
the entry's ``name`` is the spelling sdft stores and prints. Any other optimizer is named as
kohya names it: ``module.Class`` (``torch.optim.RAdam``, ``mypkg.MyOpt``), see docs/run-file.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

# Usual learning rates for a full fine-tune of SD (kohya's docs and the peers' presets: 1e-6 to 2e-5
# for Adam-type optimizers, LoRA-level rates up to 1e-4), with room on both sides: outside it a run
# learns nothing or diverges. Lion takes 3-10x less than Adam; adaptive optimizers take a multiplier.
ADAM_LR = (1e-7, 1e-3)
LION_LR = (1e-8, 3e-4)
SGD_LR = (1e-6, 1.0)
ADAPTIVE_LR = (0.1, 10.0)


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    builder: str                        # "module:function" taking (entry, groups, lr, args, device_type)
    cls: str | None = None              # "module.Class" for the builders that build a class
    package: str | None = None          # import name of the optional package it needs
    pip: str | None = None              # what `pip install` takes to get it
    state_bytes: float | None = 8.0     # optimizer states per trained fp32 parameter (None: Adafactor's, per family: Family.plan)
    foreach: bool = False               # its default step allocates a temporary copy of every parameter
    per_parameter: bool = False         # a weight's update needs only its own gradient and state, so a
                                        # part of the model can be stepped alone (fused backward pass,
                                        # bf16 rounding in pieces: engine/train/weight_update.py)
    states_in_param_dtype: bool = False  # states take the parameters' dtype (halved with full_bf16)
    cuda: bool = False                  # made for a CUDA GPU: presets and suggestions avoid it without one
    paged: bool = False                 # bitsandbytes' paged states (CPU<->GPU); a CPU has nothing to page
    schedule_free: bool = False         # no LR schedule; train()/eval() switched around sampling and saving
    adaptive_lr: bool = False           # finds its own step size: learning_rate is a multiplier near 1.0
    aliases: tuple[str, ...] = ()       # other names kohya accepts for it
    instead: str | None = None          # the nearest in memory that runs on any machine (the planner's pick)
    lr_range: tuple[float, float] | None = ADAM_LR   # usual learning rates (--check warns outside; None: no rule)
    doc: str = ""

    @property
    def install(self) -> str | None:
        return f"pip install {self.pip}" if self.pip else None


# The fields every optimizer of one package shares, spread into its entries (typed, so a checker
# sees each entry's full set of fields).
class _Package(TypedDict):
    package: str
    pip: str


class _Bitsandbytes(_Package):
    cuda: bool
    per_parameter: bool


class _DAdaptation(_Package):
    adaptive_lr: bool
    states_in_param_dtype: bool
    lr_range: tuple[float, float]


class _ScheduleFree(_Package):
    schedule_free: bool
    states_in_param_dtype: bool


_T = "engine.train.optimizers:"
BNB: _Bitsandbytes = dict(package="bitsandbytes", pip="bitsandbytes", cuda=True, per_parameter=True)
DADAPT: _DAdaptation = dict(package="dadaptation", pip="dadaptation", adaptive_lr=True,
                            states_in_param_dtype=True, lr_range=ADAPTIVE_LR)
SCHEDULEFREE: _ScheduleFree = dict(package="schedulefree", pip="schedulefree", schedule_free=True,
                                   states_in_param_dtype=True)

# kohya's --optimizer_type list, in the order of its help text. State bytes: measured (the tests
# step each on a parameter and count its state tensors); bitsandbytes keeps one fp32 absmax per
# 2048-value block on CUDA (hence 2.006 / 1.006; tensors under 4096 values stay 32-bit).
OPTIMIZERS: tuple[OptimizerEntry, ...] = (
    OptimizerEntry("AdamW", _T + "adamw", "torch.optim.AdamW", states_in_param_dtype=True, per_parameter=True,
                   doc="torch's AdamW (fused: one kernel, no temporary copy)"),
    OptimizerEntry("AdamW8bit", _T + "with_class", "bitsandbytes.optim.AdamW8bit", state_bytes=2.006, instead="Adafactor", **BNB,
                   doc="8-bit AdamW (bitsandbytes)"),
    OptimizerEntry("PagedAdamW", _T + "with_class", "bitsandbytes.optim.PagedAdamW", paged=True, instead="AdamW", **BNB,
                   doc="AdamW with states paged to CPU memory under pressure (bitsandbytes)"),
    OptimizerEntry("PagedAdamW8bit", _T + "with_class", "bitsandbytes.optim.PagedAdamW8bit", state_bytes=2.006, instead="Adafactor",
                   paged=True, **BNB, doc="8-bit paged AdamW (bitsandbytes)"),
    OptimizerEntry("PagedAdamW32bit", _T + "with_class", "bitsandbytes.optim.PagedAdamW32bit", paged=True, instead="AdamW", **BNB,
                   doc="32-bit paged AdamW (bitsandbytes)"),
    OptimizerEntry("Lion", _T + "with_class", "lion_pytorch.Lion", package="lion_pytorch", pip="lion-pytorch",
                   state_bytes=4.0, states_in_param_dtype=True, per_parameter=True, lr_range=LION_LR,
                   doc="Lion (lion-pytorch, as kohya)"),
    OptimizerEntry("Lion8bit", _T + "with_class", "bitsandbytes.optim.Lion8bit", state_bytes=1.006, instead="Lion",
                   lr_range=LION_LR, **BNB,
                   doc="8-bit Lion (bitsandbytes)"),
    OptimizerEntry("PagedLion8bit", _T + "with_class", "bitsandbytes.optim.PagedLion8bit", state_bytes=1.006, instead="Lion",
                   paged=True, lr_range=LION_LR, **BNB, doc="8-bit paged Lion (bitsandbytes)"),
    OptimizerEntry("SGDNesterov", _T + "nesterov", "torch.optim.SGD", state_bytes=4.0, foreach=True,
                   states_in_param_dtype=True, per_parameter=True, lr_range=SGD_LR,
                   doc="SGD with Nesterov momentum (0.9 unless given)"),
    OptimizerEntry("SGDNesterov8bit", _T + "nesterov", "bitsandbytes.optim.SGD8bit", state_bytes=1.006, instead="SGDNesterov",
                   lr_range=SGD_LR, **BNB,
                   doc="8-bit SGD with Nesterov momentum (bitsandbytes)"),
    OptimizerEntry("DAdaptation", _T + "with_class", "dadaptation.experimental.DAdaptAdamPreprint",
                   state_bytes=12.0, aliases=("DAdaptAdamPreprint",), **DADAPT,
                   doc="D-Adaptation Adam, the preprint's version"),
    OptimizerEntry("DAdaptAdaGrad", _T + "with_class", "dadaptation.DAdaptAdaGrad", state_bytes=12.0, **DADAPT),
    OptimizerEntry("DAdaptAdam", _T + "with_class", "dadaptation.DAdaptAdam", state_bytes=12.0, **DADAPT),
    OptimizerEntry("DAdaptAdan", _T + "with_class", "dadaptation.DAdaptAdan", state_bytes=20.0, **DADAPT),
    OptimizerEntry("DAdaptAdanIP", _T + "with_class", "dadaptation.experimental.DAdaptAdanIP", state_bytes=20.0,
                   **DADAPT),
    OptimizerEntry("DAdaptLion", _T + "with_class", "dadaptation.DAdaptLion", state_bytes=8.0, **DADAPT),
    OptimizerEntry("DAdaptSGD", _T + "with_class", "dadaptation.DAdaptSGD", state_bytes=12.0, **DADAPT),
    OptimizerEntry("Prodigy", _T + "with_class", "prodigyopt.Prodigy", package="prodigyopt", pip="prodigyopt",
                   state_bytes=16.0, adaptive_lr=True, states_in_param_dtype=True, lr_range=ADAPTIVE_LR,
                   doc="Prodigy (prodigyopt): adapts its step size"),
    OptimizerEntry("Adafactor", _T + "adafactor", "transformers.optimization.Adafactor", state_bytes=None,
                   per_parameter=True, doc="transformers' Adafactor; relative_step = true pairs it with the adafactor schedule"),
    OptimizerEntry("RAdamScheduleFree", _T + "with_class", "schedulefree.RAdamScheduleFree", foreach=True,
                   **SCHEDULEFREE),
    OptimizerEntry("AdamWScheduleFree", _T + "with_class", "schedulefree.AdamWScheduleFree", foreach=True,
                   **SCHEDULEFREE),
    OptimizerEntry("SGDScheduleFree", _T + "with_class", "schedulefree.SGDScheduleFree", state_bytes=4.0,
                   lr_range=SGD_LR, **SCHEDULEFREE),
)

NAMES: tuple[str, ...] = tuple(e.name for e in OPTIMIZERS)
# Packages sdft depends on (pyproject.toml): installed with sdft, so no choice "needs" them.
CORE_PACKAGES = frozenset({"torch", "transformers", "lion_pytorch"})
DEFAULT = "AdamW"
# A module.Class the planner knows nothing about: counted as AdamW (most torch optimizers keep
# at most two states per parameter).
UNKNOWN_STATE_BYTES = 8.0

_BY_NAME = {n.lower(): e for e in OPTIMIZERS for n in (e.name, *e.aliases)}
CUSTOM_BUILDER = _T + "custom_class"


def find(name: str) -> OptimizerEntry | None:
    """The entry ``name`` means (any case, kohya's aliases too), or None."""
    return _BY_NAME.get(str(name).lower())


def is_class_path(name: str) -> bool:
    """``module.Class``: an optimizer class sdft has no entry for, imported as kohya imports it."""
    module, dot, cls = str(name).rpartition(".")
    return bool(dot and module and cls.isidentifier())


def entry_for(name: str) -> OptimizerEntry:
    """The entry of ``name``; a ``module.Class`` gets one built on the spot (AdamW's memory)."""
    entry = find(name)
    if entry is not None:
        return entry
    if is_class_path(name):
        return OptimizerEntry(name, CUSTOM_BUILDER, name, package=name.split(".")[0])
    raise ValueError(unknown_message(name))


def unknown_message(name: str) -> str:
    return (f"unknown optimizer {name!r}: use one of {', '.join(NAMES)}, or module.Class for any other "
            "(torch.optim.RAdam, mypackage.MyOptimizer)")


def canonical(value: object) -> object:
    """The schema's normaliser of ``optimizer.type``: sdft's spelling of a known name, a
    ``module.Class`` as written; anything else is a ValueError saying what is accepted."""
    if not isinstance(value, str):
        return value   # the type check reports it
    entry = find(value)
    if entry is not None:
        return entry.name
    if is_class_path(value):
        return value
    raise ValueError(unknown_message(value))


def needs_package(name: str) -> tuple[str, str] | None:
    """(import name, pip command) of the optional package ``name`` needs, or None."""
    entry = find(name)
    if entry is None or entry.package is None or entry.install is None:
        return None
    return entry.package, entry.install


__all__ = ["CORE_PACKAGES", "DEFAULT", "NAMES", "OPTIMIZERS", "OptimizerEntry", "UNKNOWN_STATE_BYTES",
           "canonical", "entry_for", "find", "is_class_path", "needs_package", "unknown_message"]

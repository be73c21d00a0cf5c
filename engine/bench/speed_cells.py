"""`sdft bench --matrix`: which cells to time, what each one changes, and which cannot run here.

Torch-free: the axes are (dotted run-TOML key, values) pairs read from one list, so a speed option
the schema does not have yet is listed as skipped with that reason instead of breaking the bench.
A cell is the run file with a few keys changed; it is checked the way the run file is (the
schema's validation), then against this machine (engine.hardware's OPTION_NEEDS), before anything
is built.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, fields
from typing import Any

# The dataset tables hold the batch size (kohya's layout), not a schema section.
BATCH_KEY = "datasets.batch_size"

# What `sdft bench --matrix` times on a run file: each value of each axis, one at a time.
MATRIX_AXES: tuple[tuple[str, tuple], ...] = (
    ("memory.attention", ("sdpa", "xformers", "math")),
    ("memory.gradient_checkpointing", (False, True)),
    ("memory.torch_compile", (False, True)),
    ("memory.channels_last", (False, True)),
    ("memory.mixed_precision", ("no", "fp16", "bf16")),
    ("optimizer.type", ("AdamW", "AdamW8bit")),
    (BATCH_KEY, (1, 4, 8)),
)

# Choices the trainer would silently replace on a CPU: timing them would time something else.
REPLACED_ON_CPU = {
    ("memory.mixed_precision", "fp16"): "a CPU trains fp16 runs in bf16",
    ("memory.attention", "xformers"): "without a CUDA GPU the trainer uses SDPA",
}


@dataclass
class Cell:
    """One timing: the run file with ``changes`` applied. ``status`` is planned, ran, skipped
    (cannot run here, ``reason`` says why), failed (it raised, ``reason`` says what) or not run
    (past the time budget)."""

    changes: dict[str, Any]
    status: str = "planned"
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.changes:
            return "baseline (the run file)"
        return ", ".join(f"{short_name(key)}={_show(value)}" for key, value in self.changes.items())

    def as_dict(self) -> dict:
        return {"label": self.label, "changes": dict(self.changes), "status": self.status,
                "reason": self.reason, **self.figures}


def short_name(key: str) -> str:
    """A key as a table shows it: its last part, except where that says too little."""
    return {"optimizer.type": "optimizer", BATCH_KEY: "batch"}.get(key, key.rsplit(".", 1)[-1])


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_axis(text: str) -> tuple[str, tuple]:
    """``KEY=V1,V2`` from the command line: true/false and integers are read as such."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ValueError(f"--axis {text!r}: write it as KEY=VALUE,VALUE (e.g. memory.attention=sdpa,math)")
    return key.strip(), tuple(_typed(v.strip()) for v in values.split(","))


def _typed(text: str):
    low = text.lower()
    if low in ("true", "on", "false", "off"):
        return low in ("true", "on")
    try:
        return int(text)
    except ValueError:
        return text


# ---------------------------------------------------------------- which cells


def one_at_a_time(axes, base_values: dict[str, Any]) -> list[Cell]:
    """The run file itself, then each other value of each axis on its own."""
    cells = [Cell({})]
    for key, values in axes:
        cells.extend(Cell({key: value}) for value in values if value != base_values.get(key))
    return cells


def every_combination(axes) -> list[Cell]:
    """Every combination of the axes' values, nearest the first combination first, so a time
    budget that runs out leaves the farthest combinations unrun rather than a whole axis."""
    first = [values[0] for _key, values in axes]
    combos = list(itertools.product(*(values for _key, values in axes)))
    combos.sort(key=lambda combo: sum(a != b for a, b in zip(combo, first, strict=True)))
    return [Cell({key: value for (key, _values), value in zip(axes, combo, strict=True)}) for combo in combos]


# ---------------------------------------------------------------- can a cell run here


def schema_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be set in a run file (None when it can)."""
    from engine.config.schema import SECTIONS

    if key == BATCH_KEY:
        return None
    section, _, name = key.partition(".")
    if section not in SECTIONS or name not in {f.name for f in fields(SECTIONS[section])}:
        return f"this sdft has no run-file key {key}"
    return None


def base_value(config, key: str):
    """What the run file (resolved) says for ``key``."""
    if key == BATCH_KEY:
        datasets = getattr(config.datasets, "datasets", None) or []
        return datasets[0].batch_size if datasets else 1
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name, None)


def machine_problem(key: str, value, cuda: bool, packages: frozenset, bf16: bool = True) -> str | None:
    """Why ``key = value`` cannot be timed here: a package is missing, or the trainer would
    replace it with something else on this device (fp16 on a CPU, bf16 on a GPU without it)."""
    from engine.hardware import BF16_WORDS, OPTION_NEEDS

    if not cuda and (key, value) in REPLACED_ON_CPU:
        return f"{value} needs a CUDA GPU ({REPLACED_ON_CPU[key, value]})"
    need = OPTION_NEEDS.get((key, value)) if isinstance(value, (str, bool)) else None
    if need is not None and need.package and need.package not in packages:
        return f"{value} needs the package {need.package} (pip install {need.pip})"
    if need is not None and need.bf16 and not bf16:
        return f"{key} = {_show(value)} needs {BF16_WORDS} (this one would train in fp16 instead)"
    return None


def cell_problem(cell: Cell, cuda: bool, packages: frozenset, bf16: bool = True) -> str | None:
    for key, value in cell.changes.items():
        reason = schema_key_problem(key) or machine_problem(key, value, cuda, packages, bf16)
        if reason:
            return reason
    return None


def cell_config(data: dict, cell: Cell, *, file: str, base_dir):
    """The RunConfig of a cell, validated as the run file is; (config, None) or (None, why not)."""
    from pathlib import Path

    from engine.config.problems import ProblemList
    from engine.config.run_toml import build_run_config

    changed = copy.deepcopy(data)
    for key, value in cell.changes.items():
        if key != BATCH_KEY:
            section, _, name = key.partition(".")
            changed.setdefault(section, {})[name] = value
    problems = ProblemList(file=file)
    config = build_run_config(changed, problems, base_dir=Path(base_dir))
    errors = [p for p in problems.items if p.severity == "error"]
    if errors:
        return None, "; ".join(f"{p.key}: {p.message}" for p in errors)
    config.source_path = file
    if BATCH_KEY in cell.changes:
        for dataset in getattr(config.datasets, "datasets", None) or []:
            dataset.batch_size = int(cell.changes[BATCH_KEY])
    return config, None

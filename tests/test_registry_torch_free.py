"""The registries are plain tables: importing them (and the schema that reads them) loads no
torch, diffusers, transformers, bitsandbytes or Textual, so the wizard and --help stay instant."""

from __future__ import annotations

import pytest
from fresh_process import snippet

HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes", "textual", "onnxruntime")


REGISTRIES = ["engine.registry.optimizers", "engine.registry.schedulers", "engine.registry.labelers", "engine.plan",
              "engine.preflight.optimizer"]
for _module in REGISTRIES:
    snippet(f"registry {_module}", f"import sys, {_module}\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")


@pytest.mark.parametrize("module", REGISTRIES)
def test_a_registry_imports_without_torch(module, in_fresh_process):
    out = in_fresh_process(f"registry {module}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_every_entry_names_a_builder_or_loader_that_exists():
    import importlib

    from engine.registry import labelers, optimizers

    for entry in optimizers.OPTIMIZERS:
        module, _, function = entry.builder.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), entry.name
        assert entry.cls and "." in entry.cls, entry.name
    for entry in labelers.LABELERS:
        module, _, cls = entry.loader.partition(":")
        assert hasattr(importlib.import_module(module), cls), entry.name


def test_the_consumers_read_the_registry():
    """One table: the schema's choices, the planner, --check's packages, the labelling CLI and the
    wizard's selects show the same names."""
    from dataclasses import fields

    from engine.config.schema import OptimizerConfig
    from engine.hardware import OPTION_NEEDS
    from engine.labeling.options import TAGGERS
    from engine.plan import PlanOptions, estimate_peak_vram
    from engine.registry import labelers, optimizers, schedulers

    meta = {f.name: f.metadata for f in fields(OptimizerConfig)}
    assert meta["type"]["choices"] == optimizers.NAMES and meta["lr_scheduler"]["choices"] == schedulers.NAMES
    for name in optimizers.NAMES:   # the planner knows every one, in any case
        assert estimate_peak_vram(PlanOptions(optimizer=name.lower())).total_bytes > 0
    needs = {value for (key, value) in OPTION_NEEDS if key == "optimizer.type"}
    assert needs == {e.name for e in optimizers.OPTIMIZERS
                     if e.cuda or (e.package and e.package not in optimizers.CORE_PACKAGES)}
    assert TAGGERS == labelers.TAGGERS
    from sdft_tui.screens.label_models import TAGGERS as WIZARD_TAGGERS

    assert [value for _label, value in WIZARD_TAGGERS] == list(labelers.TAGGERS)

"""Model families: one adapter per family behind one generic trainer.

SD1, SD2 (512 and 768-v) and SDXL differ in a handful of places, and each place is a
question the Trainer, the data pipeline, the cache, the hooks, the planner and the wizard
ask the family's adapter instead of testing ``v2`` flags:

* detection: which family a file, folder or hub id holds;
* loading: single file, diffusers folder, hub id, into fp32 CPU modules;
* text encoding: tokenizers and token layout, hidden states, any pooled output;
* extra conditioning: what the U-Net needs besides the states (SDXL: pooled text and
  size/crop time ids, recorded per image at bucketing time);
* the VAE's scale factor (0.18215 SD1/SD2, 0.13025 SDXL) and its safe dtype;
* saving in every format (single file keys, diffusers folder);
* the sampling pipeline;
* the planner's memory coefficients.

The interface is ``base.Family``; detection and loading are in ``sources.py``; ``sd/`` holds
the SD1 and SD2 adapters, ``sdxl/`` the SDXL foundations and its adapter, which the registry
refuses until the training loop works for SDXL. Adding a family means one folder here and one
entry in engine/registry/families.py (docs/architecture.md, "Model families").
"""

from __future__ import annotations

import importlib
from functools import cache

from engine.families.base import Family
from engine.registry import families as registry


@cache
def family(name: str) -> Family:
    """The adapter of the family named ``name`` in the registry (ValueError for an unknown name)."""
    module, _, attribute = registry.family_entry(name).adapter.partition(":")
    return getattr(importlib.import_module(module), attribute)


def family_of(model) -> Family:
    """The adapter of a loaded model (``engine.models.load.LoadedModel.family``)."""
    return family(model.family)


def family_of_settings(model_settings) -> str:
    """The family a run file's ``[model]`` table names before the model loads (the planner's
    guess): ``model.v2 = true`` is SD 2.x, anything else SD 1.x until loading detects it."""
    return "sd2" if model_settings.v2 is True else "sd1"


def every_family() -> tuple[Family, ...]:
    return tuple(family(entry.name) for entry in registry.FAMILIES)


__all__ = ["Family", "every_family", "family", "family_of", "family_of_settings"]

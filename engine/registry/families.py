"""Model families: one entry per family, naming its adapter (engine/families/) and saying
whether runs may train it yet. No torch here; the adapter module is imported when asked for.

Adding a family is one folder under engine/families/ and one entry here
(docs/architecture.md, "Model families").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyEntry:
    name: str          # the family's id: "sd1", "sd2", ...
    label: str         # how messages and the wizard name it
    adapter: str       # "module:attribute" of its engine.families.base.Family
    refused: str = ""  # why runs may not train it yet; empty: they may


FAMILIES: tuple[FamilyEntry, ...] = (
    FamilyEntry("sd1", "SD 1.x", "engine.families.sd.adapters:SD1"),
    FamilyEntry("sd2", "SD 2.x", "engine.families.sd.adapters:SD2"),
    FamilyEntry("sdxl", "SDXL", "engine.families.sdxl.adapter:SDXL"),
)

NAMES: tuple[str, ...] = tuple(e.name for e in FAMILIES)
# A source that shows nothing before it loads (a .ckpt, a hub id) goes to this family's loader:
# the SD loader, which tells SD 1.x from 2.x as it loads.
DEFAULT = "sd1"


def family_entry(name: str) -> FamilyEntry:
    for entry in FAMILIES:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown model family {name!r}: use one of {', '.join(e.name for e in FAMILIES)}")


__all__ = ["DEFAULT", "FAMILIES", "NAMES", "FamilyEntry", "family_entry"]

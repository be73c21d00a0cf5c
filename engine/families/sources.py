"""Which family a model source holds, and loading it through that family's adapter.

Detection looks only at what a source shows before it loads: a .safetensors file's header
(tensor names and shapes) or a diffusers folder's U-Net and text-encoder configs. A .ckpt (to
unpickle it is to load it) and a hub id show nothing; they go to the default family's loader,
the SD loader, which tells SD 1.x from 2.x as it loads (engine/models/detect.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.families import every_family, family
from engine.families.base import Family
from engine.registry import families as registry


@dataclass(frozen=True)
class SourceView:
    """What a source shows before it loads; empty when it shows nothing."""
    tensors: Mapping[str, Any] = field(default_factory=dict)       # name -> info with a .shape
    unet_config: Mapping[str, Any] = field(default_factory=dict)   # a diffusers folder's unet/config.json
    text_config: Mapping[str, Any] = field(default_factory=dict)   # ... and text_encoder/config.json


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}   # unreadable: the loader names what is wrong with it
    return value if isinstance(value, dict) else {}


def view_of(source: str | Path) -> SourceView:
    from engine.models.safetensors_header import HeaderError, looks_like_safetensors, read_header

    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        return SourceView(unet_config=_json(path / "unet" / "config.json"),
                          text_config=_json(path / "text_encoder" / "config.json"))
    if path.is_file() and looks_like_safetensors(path):
        try:
            return SourceView(tensors=read_header(path).tensors)
        except (HeaderError, OSError):
            return SourceView()
    return SourceView()


def detect_family(source: str | Path) -> Family | None:
    """The first family (in the registry's order) whose adapter recognises ``source``; None
    when none does or the source shows nothing before it loads."""
    view = view_of(source)
    return next((f for f in every_family() if f.recognises(view)), None)


def load_base(source: str, **options):
    """The base model at ``source`` through its family's adapter (fp32, CPU); a family the
    registry does not train yet is refused with its reason (engine.models.errors.ModelLoadError)."""
    from engine.models.errors import ModelLoadError

    found = detect_family(source)
    if found is not None and registry.family_entry(found.name).refused:
        raise ModelLoadError(f"{source}: an {found.label} model. {registry.family_entry(found.name).refused}")
    return (found or family(registry.DEFAULT)).load(source, **options)

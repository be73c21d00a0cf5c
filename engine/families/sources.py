"""Which family a model source holds, and loading it through that family's adapter.

Detection looks only at what a source shows before it loads: a .safetensors file's header
(tensor names and shapes), a .ckpt's names and shapes as the weights-only unpickler sees them
with the tensor data mapped, not read (what ``--check`` does), or a diffusers folder's U-Net
and text-encoder configs. A hub id is downloaded first (every part any family needs) and
its folder detected. A source that shows nothing (a .ckpt only the unsafe unpickler reads)
goes to the default family's loader, the SD loader, which tells SD 1.x from 2.x as it loads
(engine/models/detect.py).
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
    if path.is_file():
        return _pickle_view(path)
    return SourceView()


def _pickle_view(path: Path) -> SourceView:
    """A .ckpt's tensors as the weights-only unpickler maps them (no data read, no code run)."""
    from engine.models.checkpoint_io import scan_state_dict
    from engine.models.errors import ModelLoadError

    try:
        found = scan_state_dict(path)
    except ModelLoadError:
        return SourceView()   # not a checkpoint, or unsafe: the loader says why
    return SourceView(tensors=found[0]) if found else SourceView()


def detect_family(source: str | Path) -> Family | None:
    """The first family (in the registry's order) whose adapter recognises ``source``; None
    when none does or the source shows nothing before it loads."""
    view = view_of(source)
    return next((f for f in every_family() if f.recognises(view)), None)


def _refuse_untrained(found: Family | None, source: str) -> None:
    from engine.models.errors import ModelLoadError

    if found is not None and registry.family_entry(found.name).refused:
        raise ModelLoadError(f"{source}: an {found.label} model. {registry.family_entry(found.name).refused}")


def _hub_folder(source: str) -> Path | None:
    """A hub id's downloaded folder (every family's parts); None for a local path."""
    from engine.families.sdxl.load import FOLDER_PARTS
    from engine.models.load import SINGLE_FILE_EXT, download_hub, is_hub_id

    if Path(os.path.expanduser(source)).exists() or not is_hub_id(source) or source.lower().endswith(SINGLE_FILE_EXT):
        return None
    return download_hub(source, FOLDER_PARTS)   # SDXL's parts hold SD's; absent ones are skipped


def _load(source: str, *, for_training: bool, options: dict):
    folder = _hub_folder(str(source))
    found = detect_family(folder or source)
    if for_training:
        _refuse_untrained(found, str(source))
    model = (found or family(registry.DEFAULT)).load(str(folder or source), **options)
    if folder is not None:   # named by its id, not by the download cache's folder
        model.source, model.base_name = str(source), str(source).rstrip("/").split("/")[-1]
        model.report.insert(0, f"downloaded {source} from the Hugging Face hub")
    return model


def load_base(source: str, **options):
    """The base model at ``source`` through its family's adapter (fp32, CPU); a family the
    registry does not train yet is refused with its reason (engine.models.errors.ModelLoadError)."""
    return _load(source, for_training=True, options=options)


def load_any(source: str, **options):
    """The model at ``source`` through its family's adapter, whether runs may train that family
    or not (``sdft convert`` converts every family it can load)."""
    return _load(source, for_training=False, options=options)

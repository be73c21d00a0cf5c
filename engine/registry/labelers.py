"""Captioners and taggers ``sdft caption`` / ``sdft tag`` and the wizard's captions step can run
(no torch, no onnxruntime here).

Each entry: its name (``--tagger``), the words the wizard shows, the class that runs it (a
``module:Class`` loaded only when labelling starts), the package it needs, its default model and
the models known to work with it. The labelling options (``engine/labeling/options.py``), the
tagger loader (``engine/labeling/runner.py``), the CLI's choices and the wizard's select read this
table; a new labeller is an entry here plus its class (docs/architecture.md, "Where a new thing
goes").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class LabelerEntry:
    name: str
    kind: str                    # "caption" | "tags"
    label: str                   # the wizard's words
    loader: str                  # "module:Class", called with the labelling options
    package: str                 # import name of what it needs beyond sdft's dependencies
    pip: str
    default_model: str | None    # hub id; None: a local folder must be given
    models: tuple[str, ...] = ()

    @property
    def install(self) -> str:
        return f"pip install {self.pip}"


class Labeler(Protocol):
    """A loaded captioner or tagger, as engine/labeling/runner.py drives it. What one image and one
    batch are is the labeller's own (tensors for BLIP, arrays for the ONNX taggers), hence Any."""

    def prepare_one(self, image: Image) -> Any: ...
    def prepare_batch(self, items: list[Any]) -> Any: ...
    def run(self, batch: Any) -> list[str]: ...
    def close(self) -> None: ...


BLIP_MODELS = ("Salesforce/blip-image-captioning-large",)
WD14_MODELS = (
    "SmilingWolf/wd-v1-4-convnext-tagger-v2", "SmilingWolf/wd-v1-4-convnextv2-tagger-v2",
    "SmilingWolf/wd-v1-4-vit-tagger-v2", "SmilingWolf/wd-v1-4-swinv2-tagger-v2",
    "SmilingWolf/wd-v1-4-moat-tagger-v2", "SmilingWolf/wd-vit-tagger-v3", "SmilingWolf/wd-swinv2-tagger-v3",
    "SmilingWolf/wd-convnext-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3",
    "SmilingWolf/wd-eva02-large-tagger-v3",
)

LABELERS: tuple[LabelerEntry, ...] = (
    LabelerEntry("blip", "caption", "BLIP", "engine.labeling.blip:BlipCaptioner", "transformers", "transformers",
                 BLIP_MODELS[0], BLIP_MODELS),
    LabelerEntry("wd14", "tags", "WD14 (ONNX)", "engine.labeling.wd14:Wd14Tagger", "onnxruntime",
                 "onnxruntime (or sdft[tagger])", WD14_MODELS[0], WD14_MODELS),
    LabelerEntry("deepdanbooru", "tags", "DeepDanbooru (ONNX)", "engine.labeling.deepdanbooru:DeepDanbooruTagger",
                 "onnxruntime", "onnxruntime (or sdft[tagger])", None),
)

CAPTIONERS: tuple[str, ...] = tuple(e.name for e in LABELERS if e.kind == "caption")
TAGGERS: tuple[str, ...] = tuple(e.name for e in LABELERS if e.kind == "tags")
DEFAULT_CAPTIONER, DEFAULT_TAGGER = "blip", "wd14"
_BY_NAME = {e.name: e for e in LABELERS}


def find(name: str) -> LabelerEntry | None:
    return _BY_NAME.get(name)


def default_model(name: str) -> str | None:
    entry = _BY_NAME.get(name)
    return entry.default_model if entry else None


def load_class(name: str) -> Callable[..., Labeler]:
    """The class of labeller ``name``, called with its labelling options (imports its module:
    torch / onnxruntime live there)."""
    import importlib

    module, _, cls = _BY_NAME[name].loader.partition(":")
    labeler: Callable[..., Labeler] = getattr(importlib.import_module(module), cls)
    return labeler


__all__ = ["CAPTIONERS", "DEFAULT_CAPTIONER", "DEFAULT_TAGGER", "LABELERS", "Labeler", "LabelerEntry", "TAGGERS",
           "default_model", "find", "load_class"]

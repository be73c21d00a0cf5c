"""WD14 tagger (SmilingWolf family): ``model.onnx`` + ``selected_tags.csv``.

Runs through onnxruntime (CUDA provider when present). The input size comes from the
graph (448 for the published models); a fixed batch dimension overrides the batch size.
"""

from __future__ import annotations

import numpy as np

from engine.labeling.images import wd14_pixels
from engine.labeling.onnx_model import OnnxClassifier
from engine.labeling.options import LabelError, TagOptions
from engine.labeling.sources import resolve_model
from engine.labeling.tagrules import TagSelector, load_selected_tags

REQUIRED = ("model.onnx", "selected_tags.csv")
DEFAULT_SIZE = 448


class Wd14Tagger:
    """A labeller: ``prepare_one`` / ``prepare_batch`` on the prefetch thread, ``run`` here."""

    kind = "tags"

    def __init__(self, opts: TagOptions):
        self.opts = opts
        self.folder = resolve_model(opts.model_source, required=REQUIRED, what="WD14 tagger",
                                    allow_patterns=list(REQUIRED))
        self.rows = load_selected_tags(self.folder / "selected_tags.csv")
        self.model = OnnxClassifier(self.folder / "model.onnx", opts.device, what="WD14 tagger")
        if self.model.num_outputs is not None and self.model.num_outputs != len(self.rows):
            raise LabelError(f"{self.folder}: model.onnx gives {self.model.num_outputs} scores but "
                             f"selected_tags.csv has {len(self.rows)} rows; they must come from the same model")
        if self.model.height != self.model.width:
            raise LabelError(f"{self.folder / 'model.onnx'}: input {self.model.height}x{self.model.width} "
                             "is not square; not a WD14 tagger")
        self.size = self.model.height or DEFAULT_SIZE
        self.selector = TagSelector(self.rows, opts)
        self.device = self.model.device
        self.batch_size = self.model.batch_size(opts.batch_size)
        self.source = str(self.folder)

    def prepare_one(self, im) -> np.ndarray:
        return wd14_pixels(im, self.size)

    @staticmethod
    def prepare_batch(items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)

    def run(self, batch: np.ndarray) -> list[str]:
        return [self.selector.text(p.tolist()) for p in self.model.scores(batch)]

    def close(self) -> None:
        self.model = None


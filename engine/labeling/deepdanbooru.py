"""DeepDanbooru from an ONNX export.

A project folder holds ``tags.txt`` (one tag per line, aligned with the outputs, ratings
included) and ``model.onnx``. The Keras original is not run here: export it once with
:func:`export_keras_to_onnx` where TensorFlow and tf2onnx are installed (optional extra).
Output is raw: underscores and ``rating:*`` tags are kept (clean them with ``clean=True``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.labeling.images import deepdanbooru_pixels
from engine.labeling.onnx_model import OnnxClassifier
from engine.labeling.options import LabelError, TagOptions
from engine.labeling.sources import resolve_model
from engine.labeling.tagrules import load_tag_lines, split_list

REQUIRED = ("model.onnx", "tags.txt")
DEFAULT_SIZE = 512
DEFAULT_THRESHOLD = 0.5


class DeepDanbooruTagger:
    kind = "tags"

    def __init__(self, opts: TagOptions):
        self.opts = opts
        source = opts.model_source
        if not source:
            raise LabelError("DeepDanbooru needs a project folder (model.onnx + tags.txt): pass it with --model; "
                             "make model.onnx from the Keras .h5 once with `python -m engine.labeling.deepdanbooru "
                             "FOLDER` where TensorFlow and tf2onnx are installed")
        folder = Path(source).expanduser()
        if folder.is_dir() and not (folder / "model.onnx").exists() and list(folder.glob("*.h5")):
            raise LabelError(f"{folder} holds a Keras model but no model.onnx: export it once with "
                             f"`python -m engine.labeling.deepdanbooru {folder}` (needs TensorFlow and tf2onnx)")
        self.folder = resolve_model(source, required=REQUIRED, what="DeepDanbooru", allow_patterns=None)
        self.tags = load_tag_lines(self.folder / "tags.txt")
        self.model = OnnxClassifier(self.folder / "model.onnx", opts.device, what="DeepDanbooru")
        if self.model.num_outputs is not None and self.model.num_outputs != len(self.tags):
            raise LabelError(f"{self.folder}: model.onnx gives {self.model.num_outputs} scores but tags.txt has "
                             f"{len(self.tags)} tags; they must come from the same project")
        self.width = self.model.width or DEFAULT_SIZE
        self.height = self.model.height or DEFAULT_SIZE
        self.threshold = opts.thresh if opts.thresh is not None else DEFAULT_THRESHOLD
        self.undesired = set(split_list(opts.undesired_tags, opts.caption_separator))
        self.device = self.model.device
        self.batch_size = self.model.batch_size(opts.batch_size)
        self.source = str(self.folder)

    def prepare_one(self, im) -> np.ndarray:
        return deepdanbooru_pixels(im, self.width, self.height)

    @staticmethod
    def prepare_batch(items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)

    def select(self, probs) -> list[str]:
        if len(probs) != len(self.tags):
            raise LabelError(f"the model gives {len(probs)} scores but tags.txt has {len(self.tags)} tags")
        keep = [i for i, p in enumerate(probs) if p >= self.threshold and self.tags[i] not in self.undesired]
        if self.opts.max_tags is not None and len(keep) > self.opts.max_tags:
            best = set(sorted(keep, key=lambda i: (-probs[i], i))[:max(0, self.opts.max_tags)])
            keep = [i for i in keep if i in best]
        return [self.tags[i] for i in keep]

    def run(self, batch: np.ndarray) -> list[str]:
        return [self.opts.caption_separator.join(self.select(p.tolist())) for p in self.model.scores(batch)]

    def close(self) -> None:
        self.model = None


def export_keras_to_onnx(folder: str | Path) -> Path:
    """Convert the project's Keras ``*.h5`` to ``model.onnx`` (needs tensorflow + tf2onnx)."""
    folder = Path(folder)
    models = sorted(folder.glob("*.h5"))
    if not models:
        raise LabelError(f"{folder}: no Keras .h5 model to export")
    try:
        import tensorflow as tf  # noqa: F401 - optional extra
        import tf2onnx
    except ImportError:
        raise LabelError("exporting DeepDanbooru needs TensorFlow and tf2onnx: pip install tensorflow tf2onnx") from None
    model = tf.keras.models.load_model(str(models[0]), compile=False)
    target = folder / "model.onnx"
    from engine import atomic

    with atomic.atomic_path(target) as tmp:
        tf2onnx.convert.from_keras(model, output_path=str(tmp))
    return target


if __name__ == "__main__":  # python -m engine.labeling.deepdanbooru FOLDER
    import sys

    if len(sys.argv) != 2:
        print("usage: python -m engine.labeling.deepdanbooru PROJECT_FOLDER", file=sys.stderr)
        sys.exit(2)
    try:
        print(export_keras_to_onnx(sys.argv[1]))
    except LabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

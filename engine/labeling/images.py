"""Pixels for the taggers and a prefetching batch reader.

Decoding goes through engine.data.images.open_rgb, so transparency is composited on white
and EXIF orientation handled exactly as in training. numpy + Pillow only.

:func:`read_batches` decodes and preprocesses the next batches on a background thread while
the model works on the current one, so the device does not wait for JPEG decoding. A file
that cannot be read becomes a failure entry of its batch, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from engine.prefetch import read_ahead

if TYPE_CHECKING:   # numpy loads with the first image read: `sdft --help` and the light commands skip it
    import numpy as np


def wd14_pixels(im, size: int) -> np.ndarray:
    """WD14 input for one RGB Pillow image: float32 (size, size, 3), **BGR**, 0…255.

    Pad to a square with white, centred (left = pad_x // 2, top = pad_y // 2), then resize
    to ``size``: area (box) when shrinking, Lanczos when enlarging. No normalisation.
    """
    import numpy as np
    from PIL import Image

    w, h = im.size
    side = max(w, h)
    if (w, h) != (side, side):
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        im = canvas
    if side != size:
        resample = Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS
        im = im.resize((size, size), resample)
    rgb = np.asarray(im, dtype=np.float32)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def deepdanbooru_pixels(im, width: int, height: int) -> np.ndarray:
    """DeepDanbooru input: fit inside (width, height) keeping the aspect ratio (area),
    centre, pad by edge replication; RGB float32 in 0…1, (height, width, 3)."""
    import numpy as np
    from PIL import Image

    w, h = im.size
    scale = min(width / w, height / h)
    new_w = min(width, max(1, int(round(w * scale))))
    new_h = min(height, max(1, int(round(h * scale))))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BOX)
    arr = np.asarray(im, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    arr = np.pad(arr, ((top, height - new_h - top), (left, width - new_w - left), (0, 0)), mode="edge")
    return arr.astype(np.float32) / 255.0


@dataclass
class Batch:
    """Preprocessed images of one batch; ``failed`` = (path, reason) for unreadable files."""

    paths: list[Path] = field(default_factory=list)
    inputs: Any = None            # what the model's prepare_batch returned for ``paths``
    failed: list[tuple[Path, str]] = field(default_factory=list)


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def read_batch(paths: Sequence[Path], prepare_one: Callable[[Any], Any], prepare_batch: Callable[[list], Any],
               *, exif_transpose: bool = True) -> Batch:
    """Decode and preprocess ``paths``; unreadable files go to ``failed``."""
    from engine.data.images import open_rgb

    batch = Batch()
    items = []
    for path in paths:
        try:
            items.append(prepare_one(open_rgb(path, exif_transpose=exif_transpose)))
            batch.paths.append(Path(path))
        except Exception as exc:  # noqa: BLE001 - truncated, not an image, permission...
            batch.failed.append((Path(path), describe_error(exc)))
    if items:
        try:
            batch.inputs = prepare_batch(items)
        except Exception as exc:  # noqa: BLE001 - reported per image, the run goes on
            batch.failed.extend((p, describe_error(exc)) for p in batch.paths)
            batch.paths = []
    return batch


def read_batches(paths: Sequence[Path], batch_size: int, prepare_one, prepare_batch, *,
                 depth: int = 2, exif_transpose: bool = True) -> Iterator[Batch]:
    """Preprocessed batches of ``paths`` in order, ``depth`` batches decoded ahead on a
    background thread (engine.prefetch.read_ahead); closing the iterator stops it."""
    chunks = [list(paths[i:i + batch_size]) for i in range(0, len(paths), max(1, batch_size))]
    return read_ahead(lambda chunk: read_batch(chunk, prepare_one, prepare_batch, exif_transpose=exif_transpose),
                      chunks, depth, name="sdft-label-prefetch")

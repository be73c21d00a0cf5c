"""Decode an image into the 8-bit RGB pixels a bucket needs.

Conversions: palette, CMYK, 16-bit, LA/RGBA → RGB, transparency composited on white; EXIF
orientation applied when asked. Then cover-resize, crop to the bucket, optional flip and
colour augmentation. numpy only; ``to_tensor`` imports torch lazily.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

INTERPOLATION_NAMES = {
    "lanczos": "LANCZOS", "nearest": "NEAREST", "bilinear": "BILINEAR", "linear": "BILINEAR",
    "bicubic": "BICUBIC", "cubic": "BICUBIC", "area": "BOX", "box": "BOX",
}


def open_rgb(path: str | Path, *, exif_transpose: bool = True):
    """A fully decoded 8-bit RGB Pillow image (raises on unreadable or truncated files)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def to_rgb(im):
    """Any Pillow mode → 8-bit RGB; alpha (or palette transparency) composited on white."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr = np.clip(arr, 0.0, 1.0 if arr.max() <= 1.0 else 255.0)
            scale = 255.0 if arr.max() <= 1.0 else 1.0
            arr8 = (arr * scale).round().astype(np.uint8)
        else:
            arr = arr.astype(np.int64)
            # "I;16*" is 16-bit by definition: always keep the top 8 bits (a dark image has
            # every value below 256 and must stay dark). Plain "I" (32-bit) may hold 8- or
            # 16-bit data; there the value range decides.
            sixteen = mode.startswith("I;16") or arr.max() > 255
            arr8 = (np.clip(arr, 0, 65535) >> 8 if sixteen else np.clip(arr, 0, 255)).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV") or mode.startswith("I;"):
        return im.convert("RGB")
    return im.convert("RGB")


def auto_interpolation(size: tuple[int, int], resized: tuple[int, int]) -> str:
    """``area`` when shrinking on both axes, otherwise ``lanczos``."""
    return "area" if size[0] >= resized[0] and size[1] >= resized[1] else "lanczos"


def resize_crop(im, resized: tuple[int, int], bucket: tuple[int, int], offset: tuple[int, int],
                interpolation: str | None = None) -> np.ndarray:
    """Resize (only when needed) then crop to the bucket at ``offset``: uint8 (H, W, 3)."""
    from PIL import Image

    size = im.size
    if tuple(resized) != tuple(size):
        name = interpolation or auto_interpolation(size, resized)
        resample = getattr(Image.Resampling, INTERPOLATION_NAMES[name])
        im = im.resize(tuple(resized), resample)
    x, y = offset
    arr = np.asarray(im, dtype=np.uint8)
    return arr[y:y + bucket[1], x:x + bucket[0]]


def flip(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr[:, ::-1])


def color_augment(arr: np.ndarray, rng: random.Random) -> np.ndarray:
    """p = 0.33; half the time a hue shift of U(±8) OpenCV hue units, else gamma U(0.95, 1.05)."""
    if rng.random() >= 0.33:
        return arr
    from PIL import Image

    if rng.random() < 0.5:
        shift_units = rng.uniform(-8, 8)          # OpenCV: hue in [0, 180)
        hsv = np.asarray(Image.fromarray(arr, "RGB").convert("HSV")).copy()
        delta = int(round(shift_units * 256 / 180))  # Pillow: hue in [0, 256)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + delta) % 256
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    gamma = rng.uniform(0.95, 1.05)
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return table[arr]


def load_pixels(path: str | Path, resized: tuple[int, int], bucket: tuple[int, int], offset: tuple[int, int], *,
                interpolation: str | None = None, flipped: bool = False, exif_transpose: bool = True) -> np.ndarray:
    """Decode → RGB → resize → crop → flip: uint8 (H, W, 3) of exactly the bucket's size."""
    im = open_rgb(path, exif_transpose=exif_transpose)
    arr = resize_crop(im, resized, bucket, offset, interpolation)
    if arr.shape[:2] != (bucket[1], bucket[0]):
        raise ValueError(f"{path}: cropped to {arr.shape[1]}x{arr.shape[0]}, expected {bucket[0]}x{bucket[1]} "
                         f"(resize target {resized}, offset {offset})")
    return flip(arr) if flipped else arr


def to_tensor(arrays):
    """uint8 (H, W, 3) arrays → float32 tensor (B, 3, H, W) in [-1, 1] (x/255·2 − 1)."""
    import torch

    batch = np.stack(arrays) if isinstance(arrays, (list, tuple)) else arrays[None]
    t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    return t.div_(255.0).mul_(2.0).sub_(1.0)

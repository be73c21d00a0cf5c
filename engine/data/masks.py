"""Loss masks (masked loss): where each image's mask comes from, its pixels in the image's
bucket, and the same mask on the latent grid.

As kohya-ss/sd-scripts does it (``apply_masked_loss``): an alpha mask is the image's alpha
channel / 255 (an image without alpha gives all ones); a mask image from the subset's
``conditioning_data_dir`` (the file with the image's stem) gives its red channel / 255 and must
have the image's size. The mask is resized and cropped exactly as the image is (same
interpolation, same offset), then averaged onto the latent grid (``area``, 8×8 pixels per
latent pixel). It is flipped on the latent grid, so a cached and a live batch carry the same
numbers. See docs/run-file.md ("Masked loss").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.scan import image_extensions


class MaskError(ValueError):
    """A mask that cannot be used (missing, unreadable, or not the image's size)."""


@dataclass(frozen=True)
class MaskSource:
    """Where one image's mask comes from: ``kind`` "alpha" (``path`` is the image) or "file"."""

    kind: str
    path: Path


def find_mask(image: Path, mask_dir: Path) -> Path | None:
    """The mask for ``image`` in ``mask_dir``: a file with the image's stem and an image
    extension (kohya's ``glob_images(dir, stem)``), the first in extension order."""
    stem = Path(image).stem
    for ext in image_extensions():
        for candidate in (mask_dir / f"{stem}{ext}", mask_dir / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def mask_source(image: Path, subset) -> MaskSource | None:
    """The subset's mask for ``image`` (None when the subset gives none); raises MaskError when
    the subset has a mask folder without this image's mask (kohya refuses the same)."""
    if subset.conditioning_data_dir is not None:
        found = find_mask(image, Path(subset.conditioning_data_dir))
        if found is None:
            raise MaskError(f"no mask for {Path(image).name} in {subset.conditioning_data_dir} "
                            f"(a mask image named {Path(image).stem}.png or another image extension)")
        return MaskSource("file", found)
    if subset.alpha_mask:
        return MaskSource("alpha", Path(image))
    return None


def mask_identity(source: MaskSource | None, image_sha256: str, file_sha256) -> str | None:
    """What the cache key records of a mask: "alpha" (the image's bytes are hashed already)
    or the mask file's sha256."""
    if source is None:
        return None
    if source.kind == "alpha":
        return "alpha"
    return "file:" + file_sha256(source.path)


def _mask_image(source: MaskSource, image_size: tuple[int, int], exif_transpose: bool):
    """The mask as an 8-bit greyscale Pillow image of the image's (oriented) size."""
    from PIL import Image, ImageOps

    with Image.open(source.path) as im:
        im.load()
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        if source.kind == "alpha":
            if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
                return im.convert("RGBA").getchannel("A")
            return Image.new("L", im.size, 255)       # no alpha: every pixel counts (kohya)
        mask = im.convert("RGB").getchannel("R")
    if mask.size != tuple(image_size):
        raise MaskError(f"mask {source.path} is {mask.size[0]}x{mask.size[1]}, its image "
                        f"{image_size[0]}x{image_size[1]}: a mask must have its image's size")
    return mask


def mask_pixels(source: MaskSource, image_size: tuple[int, int], resized: tuple[int, int],
                bucket: tuple[int, int], offset: tuple[int, int], *, interpolation: str | None,
                exif_transpose: bool = True) -> np.ndarray:
    """The mask in the bucket: float32 (H, W) in [0, 1], resized and cropped as the image is."""
    from engine.data.images import resize_crop

    mask = _mask_image(source, image_size, exif_transpose)
    arr = resize_crop(mask, resized, bucket, offset, interpolation)
    if arr.shape[:2] != (bucket[1], bucket[0]):
        raise MaskError(f"{source.path}: mask cropped to {arr.shape[1]}x{arr.shape[0]}, expected "
                        f"{bucket[0]}x{bucket[1]}")
    return arr.astype(np.float32) / 255.0


def latent_mask(pixels: np.ndarray):
    """A bucket-sized mask on the latent grid: (1, H/8, W/8) float32, each value the mean of its
    8×8 pixels (torch's ``area`` interpolation, as kohya resizes the mask to the loss)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    h, w = pixels.shape[0] // 8, pixels.shape[1] // 8
    return F.interpolate(t, size=(h, w), mode="area")[0].contiguous()


def load_latent_mask(source: MaskSource, image_size, resized, bucket, offset, *, interpolation: str | None,
                     exif_transpose: bool = True):
    """:func:`mask_pixels` on the latent grid (unflipped; a flip is ``mask.flip(-1)``)."""
    return latent_mask(mask_pixels(source, image_size, resized, bucket, offset, interpolation=interpolation,
                                   exif_transpose=exif_transpose))


def mask_problem(source: MaskSource, image_size: tuple[int, int], exif_transpose: bool = True) -> str | None:
    """Why a mask cannot weight its image's loss (unreadable, wrong size, all zero), or None."""
    try:
        mask = _mask_image(source, image_size, exif_transpose)
    except MaskError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - unreadable or truncated: one finding, never a crash
        return f"cannot read the mask {source.path}: {exc}"
    if mask.getextrema()[1] == 0:
        where = "its alpha channel is fully transparent" if source.kind == "alpha" else f"{source.path} is all black"
        return f"empty mask ({where}): the image adds nothing to the loss"
    return None

"""SDXL's size and crop conditioning, recorded per image as kohya's ``sdxl_train.py`` does.

SDXL's U-Net is told, besides the text, six numbers per image: the original size (h, w),
the crop's top-left (top, left) and the target size (h, w). diffusers calls them
``add_time_ids`` and embeds each in ``addition_time_embed_dim`` (256) sinusoidal features,
as kohya's ``sdxl_train_util.get_size_embeddings`` does; the order is the same in both.

kohya records them in ``library/train_util.py`` (``BaseDataset.__getitem__``):

* original size: the image's size before the bucket resize;
* target size: the bucket;
* crop top-left: **not** the crop actually taken. ``BucketManager.get_crop_ltrb`` computes
  where the image would sit if it were scaled to fit *inside* the bucket, centred (Stability
  AI's preprocessing), so an image cropped left and right records a top offset and left 0.
  Random crop changes which pixels are kept but not these numbers (kohya's comment: it has
  "no idea how to reflect" a random crop). sdft records the same numbers so a model trained
  here sees what kohya-trained models saw;
* flipped images record ``left = target width - crop right``;
* without bucketing (``enable_bucket = false``) the original size is the image after its
  crop, the crop is (0, 0, 0, 0), and a flip therefore records ``left = target width``.

No torch at import: the data pipeline records these numbers on its loader threads.
"""

from __future__ import annotations

from dataclasses import dataclass

VAE_SCALE_FACTOR = 0.13025   # kohya's sdxl_model_util.VAE_SCALE_FACTOR (SD1/SD2: 0.18215)
TIME_ID_COUNT = 6            # original (h, w), crop (top, left), target (h, w)
SIZE_EMBED_DIM = 256         # features per number: addition_time_embed_dim of SDXL's U-Net

Size = tuple[int, int]       # (width, height), as buckets and image sizes are kept in sdft


@dataclass(frozen=True)
class SizeConditioning:
    """The six numbers of one image, in the U-Net's order."""

    original_hw: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_hw: tuple[int, int]

    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        return (*self.original_hw, *self.crop_top_left, *self.target_hw)


def fit_inside_ltrb(bucket: Size, image_size: Size) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of ``image_size`` scaled to fit inside ``bucket``, centred.

    kohya's ``BucketManager.get_crop_ltrb``, with its float arithmetic kept (floor division
    of floats), so the recorded numbers match kohya's to the pixel.
    """
    bucket_w, bucket_h = bucket
    image_ar = image_size[0] / image_size[1]
    if bucket_w / bucket_h > image_ar:      # the bucket is wider: heights match
        width, height = bucket_h * image_ar, bucket_h
    else:                                   # widths match
        width, height = bucket_w, bucket_w / image_ar
    left = (bucket_w - width) // 2
    top = (bucket_h - height) // 2
    return left, top, left + width, top + height


def size_conditioning(image_size: Size, bucket: Size, *, flipped: bool = False) -> SizeConditioning:
    """What kohya records for an image of ``image_size`` (w, h) trained in ``bucket`` (w, h).

    The crop offset (centre or random) is deliberately not an argument: kohya's numbers do
    not depend on it.
    """
    _check_size("image size", image_size)
    _check_size("bucket", bucket)
    left, top, right, _ = fit_inside_ltrb(bucket, image_size)
    if flipped:
        left = bucket[0] - right
    return SizeConditioning(
        original_hw=(int(image_size[1]), int(image_size[0])),
        crop_top_left=(int(top), int(left)),
        target_hw=(int(bucket[1]), int(bucket[0])),
    )


def unbucketed_conditioning(size: Size, *, flipped: bool = False) -> SizeConditioning:
    """kohya without bucketing: the image, already cropped to ``size`` (w, h), is both sizes."""
    _check_size("image size", size)
    w, h = int(size[0]), int(size[1])
    return SizeConditioning(original_hw=(h, w), crop_top_left=(0, w if flipped else 0), target_hw=(h, w))


def add_time_ids(conditions, device=None, dtype=None):
    """(B, 6) tensor for ``added_cond_kwargs["time_ids"]`` of diffusers' SDXL U-Net.

    kohya keeps the numbers as integers until the embedding; they are small integers,
    exact in fp32, bf16 excepted (bf16 keeps 8 bits: pass fp32 and let the U-Net cast).
    """
    import torch

    rows = [c.time_ids() for c in conditions]
    if not rows:
        raise ValueError("add_time_ids needs at least one image's conditioning")
    return torch.tensor(rows, dtype=dtype or torch.float32, device=device)


def _check_size(what: str, size) -> None:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"{what} must be (width, height) with both above 0, got {tuple(size)!r}")

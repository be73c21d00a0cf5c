"""Each image's size and crop numbers for families whose U-Net takes them (SDXL), recorded as
the pipeline buckets and flips it, by kohya's rule (engine/families/sdxl/conditioning.py;
docs/sdxl.md, "Size and crop conditioning").

The numbers depend on the image's size, its bucket, whether bucketing is on and whether this
draw is flipped: not on the crop offset, random or centred (kohya records where the image
would sit fitted inside the bucket, not the crop it takes). A cache entry's key covers all of
them (the image's bytes, its bucket), and its flipped twin records its own numbers.
"""

from __future__ import annotations

from engine.families.sdxl.conditioning import SizeConditioning, size_conditioning, unbucketed_conditioning


def item_conditioning(size: tuple[int, int], bucket: tuple[int, int], *, bucketed: bool,
                      flipped: bool) -> SizeConditioning:
    """What kohya's ``BaseDataset.__getitem__`` records for an image of ``size`` (w, h) trained in
    ``bucket``. Without bucketing kohya trains images already cut to the resolution, so both
    sizes are the bucket and the crop is (0, 0) (a flip: left = the width)."""
    if bucketed:
        return size_conditioning(size, bucket, flipped=flipped)
    return unbucketed_conditioning(bucket, flipped=flipped)


def entry_conditioning(size: tuple[int, int], bucket: tuple[int, int], *, bucketed: bool,
                       flip: bool) -> dict[str, list[int]]:
    """A cache entry's numbers, its flipped twin's too: ``{"plain": [6], "flipped": [6]}``."""
    numbers = {"plain": list(item_conditioning(size, bucket, bucketed=bucketed, flipped=False).time_ids())}
    if flip:
        numbers["flipped"] = list(item_conditioning(size, bucket, bucketed=bucketed, flipped=True).time_ids())
    return numbers

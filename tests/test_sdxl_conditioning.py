"""SDXL size and crop conditioning as kohya's train_util records it (docs/sdxl.md)."""

from __future__ import annotations

import math

import pytest

from engine.families.sdxl.conditioning import (
    VAE_SCALE_FACTOR,
    SizeConditioning,
    add_time_ids,
    size_conditioning,
    unbucketed_conditioning,
)


def test_vae_scale_is_sdxl_s():
    assert VAE_SCALE_FACTOR == 0.13025


def test_wide_image_records_a_top_offset_not_its_side_crop():
    # 1200x800 covers 1216x832 by resizing to 1248x832 and cutting 32 px of width; kohya
    # records where it would sit fitted inside the bucket: 1216x810.67, 10 px from the top.
    c = size_conditioning((1200, 800), (1216, 832))
    assert c == SizeConditioning(original_hw=(800, 1200), crop_top_left=(10, 0), target_hw=(832, 1216))
    assert c.time_ids() == (800, 1200, 10, 0, 832, 1216)


def test_tall_image_and_its_flip():
    # 600x1000 fitted inside 640x1024: 614.4 wide, left = (640 - 614.4) // 2 = 12, right 626.4;
    # flipped, kohya records left = 640 - 626.4, truncated: 13.
    assert size_conditioning((600, 1000), (640, 1024)).crop_top_left == (0, 12)
    assert size_conditioning((600, 1000), (640, 1024), flipped=True).crop_top_left == (0, 13)
    # a flip changes nothing else
    plain, flipped = size_conditioning((600, 1000), (640, 1024)), size_conditioning((600, 1000), (640, 1024), flipped=True)
    assert (plain.original_hw, plain.target_hw) == (flipped.original_hw, flipped.target_hw)


def test_exact_fit_and_downscale_record_no_crop():
    for image in [(1024, 1024), (2048, 2048), (832, 1216), (1664, 2432)]:
        bucket = (1024, 1024) if image[0] == image[1] else (832, 1216)
        for flipped in (False, True):
            assert size_conditioning(image, bucket, flipped=flipped).crop_top_left == (0, 0)


def test_kohya_float_arithmetic_is_kept():
    # 4 / (1/49) is 196.00000000000003, so kohya's floor division records top = -1.
    assert size_conditioning((1, 49), (4, 196)).crop_top_left == (-1, 0)


def test_unbucketed_flip_records_the_full_width_as_left():
    assert unbucketed_conditioning((512, 768)).time_ids() == (768, 512, 0, 0, 768, 512)
    assert unbucketed_conditioning((512, 768), flipped=True).time_ids() == (768, 512, 0, 512, 768, 512)


def test_bad_sizes_are_refused_with_the_name():
    with pytest.raises(ValueError, match="bucket"):
        size_conditioning((100, 100), (0, 64))
    with pytest.raises(ValueError, match="image size"):
        size_conditioning((100, -1), (64, 64))


def _kohya_size_embeddings(rows, dim):
    """kohya's sdxl_train_util.get_size_embeddings, from its published formula: each number
    t -> [cos(t f_i), sin(t f_i)], f_i = exp(-ln(10000) i / (dim/2)), numbers in row order."""
    half = dim // 2
    out = []
    for row in rows:
        feats = []
        for t in row:
            freqs = [math.exp(-math.log(10000) * i / half) for i in range(half)]
            feats += [math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs]
        out.append(feats)
    return out


def test_time_ids_embed_in_the_unet_as_kohya_s_size_embeddings():
    import torch
    from diffusers import UNet2DConditionModel

    from engine.families.sdxl.tiny import TinySdxlSpec, tiny_unet_config

    conditions = [size_conditioning((1200, 800), (1216, 832)), size_conditioning((600, 1000), (640, 1024), flipped=True)]
    ids = add_time_ids(conditions)
    assert ids.shape == (2, 6) and ids.dtype == torch.float32
    assert ids[1].tolist() == [1000, 600, 0, 13, 1024, 640]

    unet = UNet2DConditionModel(**tiny_unet_config(TinySdxlSpec()))
    dim = unet.config.addition_time_embed_dim
    ours = unet.add_time_proj(ids.flatten()).reshape(len(conditions), -1)
    expected = torch.tensor(_kohya_size_embeddings(ids.tolist(), dim), dtype=torch.float32)
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)


def test_add_time_ids_needs_images():
    with pytest.raises(ValueError, match="at least one"):
        add_time_ids([])

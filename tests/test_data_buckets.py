"""bucket lists, selection, no-upscale, crop, batching and statistics (hand-computed)."""

import random

import pytest

from engine.config.dataset import round_bucket_limits
from engine.data.buckets import (
    Assignment,
    BucketSettings,
    assign_sizes,
    batches_for,
    bucket_info,
    bucket_report,
    cover_resize,
    crop_offset,
    make_bucket_list,
    nearest_buckets,
    select_no_upscale,
    steps_per_epoch,
)

# kohya's values for resolution 512, steps 64, min 256, max 1024 (worked by hand:
# h = min(1024, ((262144 // w) // 64) * 64) for w = 256 ... 1024).
KOHYA_512 = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
             (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
             (1024, 256)]
# 768: A = 589824, h = min(1024, ((A // w) // 64) * 64).
KOHYA_768 = [(256, 1024), (320, 1024), (384, 1024), (448, 1024), (512, 1024), (576, 960), (576, 1024), (640, 896),
             (704, 832), (768, 768), (832, 704), (896, 640), (960, 576), (1024, 256), (1024, 320), (1024, 384),
             (1024, 448), (1024, 512), (1024, 576)]


def test_bucket_list_512_default():
    assert make_bucket_list((512, 512), 256, 1024, 64) == KOHYA_512


def test_bucket_list_768_default():
    assert make_bucket_list((768, 768), 256, 1024, 64) == KOHYA_768


def test_bucket_list_min_filter():
    # 512x512, min 448: w=448 -> h=576; w=512 -> 512; w=576 -> 448; w=640 -> 384 < 448 dropped.
    assert make_bucket_list((512, 512), 448, 1024, 64) == [(448, 576), (512, 512), (576, 448)]


def test_bucket_list_non_square_resolution():
    # 768x512: A = 393216, s = floor(627.06/64)*64 = 576 -> (576, 576) is in the list.
    buckets = make_bucket_list((768, 512), 256, 1024, 64)
    assert (576, 576) in buckets
    assert (768, 512) in buckets       # w=768: 512 // 64 * 64 = 512
    assert buckets == sorted(buckets)


def test_bucket_list_preconditions():
    with pytest.raises(ValueError):
        make_bucket_list((1024, 1024), 256, 768, 64)


def test_rounding_of_limits():
    assert round_bucket_limits(300, 1000, 64) == (256, 1024)
    assert round_bucket_limits(256, 1024, 64) == (256, 1024)


def select_bucket(size, buckets):
    """The engine's rule for one image: (bucket, resized)."""
    (assignment,) = nearest_buckets([size], buckets)
    return assignment.bucket, assignment.resized


def scalar_rule(size, buckets):
    """kohya's rule written plainly (an oracle for the vectorised one): exact match, else the
    nearest aspect ratio, the first on ties, resized to cover."""
    if tuple(size) in buckets:
        return tuple(size), tuple(size)
    ar = size[0] / size[1]
    best = min(range(len(buckets)), key=lambda i: (abs(buckets[i][0] / buckets[i][1] - ar), i))
    return tuple(buckets[best]), cover_resize(size, buckets[best])


def test_exact_match_is_its_own_bucket():
    assert select_bucket((512, 512), KOHYA_512) == ((512, 512), (512, 512))
    assert select_bucket((320, 768), KOHYA_512) == ((320, 768), (320, 768))


def test_nearest_aspect_and_cover_scale():
    # 1000x750, ar 1.3333: (576,448) ar 1.2857 is nearest; ar > 1.2857 -> scale = 448/750.
    assert select_bucket((1000, 750), KOHYA_512) == ((576, 448), (597, 448))
    # 1000x600 ar 1.6667 == 640/384: scale = 640/1000 -> (640, 384).
    assert select_bucket((1000, 600), KOHYA_512) == ((640, 384), (640, 384))
    # portrait 600x1000 -> (384, 640)
    assert select_bucket((600, 1000), KOHYA_512) == ((384, 640), (384, 640))


def test_tie_takes_first_in_sorted_order():
    # ar 1.5 is exactly 0.5 from 1 (64x64) and from 2 (128x64): the first sorted wins.
    bucket, resized = select_bucket((96, 64), [(64, 64), (128, 64)])
    assert bucket == (64, 64)
    assert resized == (96, 64)        # ar 1.5 > 1 -> scale = 64 / 64
    assert crop_offset(resized, bucket) == (16, 0)


def test_cover_resize_rounds_half_up():
    # 333x500 into 256x384: ar 0.666 < 0.6667 -> scale = 256/333; h = 500*0.76877 = 384.38 -> 384
    assert cover_resize((333, 500), (256, 384)) == (256, 384)
    # 1001x1000 into 512x512: ar > 1 -> scale = 512/1000; w = 512.512 -> 513
    assert cover_resize((1001, 1000), (512, 512)) == (513, 512)


def test_extreme_aspect_goes_to_the_most_elongated_bucket():
    assert select_bucket((4000, 100), KOHYA_512)[0] == (1024, 256)
    assert select_bucket((100, 4000), KOHYA_512)[0] == (256, 1024)


def test_vectorised_assignment_equals_scalar_rule():
    rng = random.Random(3)
    sizes = [(rng.randint(16, 3000), rng.randint(16, 3000)) for _ in range(3000)] + KOHYA_512 + [(96, 64)]
    s = BucketSettings((512, 512), True, False, 256, 1024, 64)
    got = assign_sizes(sizes, s)
    for size, a in zip(sizes, got, strict=True):
        assert (a.bucket, a.resized) == scalar_rule(size, KOHYA_512)


def test_no_upscale_large_image():
    # 3000x2000, A=262144: rw=627.06 rh=418.04; cand1 (576, 384) ties cand2 (576, 384): not strict -> cand2.
    assert select_no_upscale((3000, 2000), 512 * 512, 64) == ((576, 384), (576, 384))


def test_no_upscale_candidate_two_wins():
    # 1000x333: cand1 832/256 = 3.25 (err .247); cand2 768/256 = 3.0 (err .003) -> resized (769, 256).
    assert select_no_upscale((1000, 333), 512 * 512, 64) == ((768, 256), (769, 256))


def test_no_upscale_candidate_one_wins():
    # 1000x700 (ar 1.42857): rw = 611.9, rh = 428.4. cand1 bw=576, bh=rts(403.2)=384 -> 1.5 (err .0714);
    # cand2 bh=384, bw=rts(548.57)=512 -> 1.3333 (err .0952). cand1 strictly better ->
    # resized = (576, floor(576/1.42857 + .5) = 403), bucket (576, 384).
    assert select_no_upscale((1000, 700), 512 * 512, 64) == ((576, 384), (576, 403))


def test_no_upscale_small_image_never_enlarged():
    assert select_no_upscale((300, 200), 512 * 512, 64) == ((256, 192), (300, 200))


def test_no_upscale_rejects_tiny_and_extreme():
    s = BucketSettings((512, 512), True, True, 256, 1024, 64)
    out = assign_sizes([(50, 50), (100000, 10), (640, 640)], s)
    assert out[0].bucket is None and "shorter than the bucket step" in out[0].error
    assert out[1].bucket is None
    assert out[2].bucket == (512, 512)


def test_bucketing_off_uses_resolution_and_cover_crop():
    s = BucketSettings((512, 512), enable_bucket=False, no_upscale=True)
    a = assign_sizes([(1024, 768)], s)[0]
    assert (a.bucket, a.resized) == ((512, 512), (683, 512))
    assert crop_offset(a.resized, a.bucket) == (85, 0)


def test_pinned_bucket_cover_resizes_and_crops():
    s = BucketSettings((512, 512), True, False, 256, 1024, 64)
    a = assign_sizes([(1000, 750), (500, 500)], s, pinned=[(512, 384), None])
    assert a[0].bucket == (512, 384)
    assert a[0].resized == (512, 384)      # 1000x750 is exactly 4:3
    assert (a[1].bucket, a[1].resized) == ((512, 512), (512, 512))   # unpinned: default rule, enlarged


def test_random_crop_range():
    rng = random.Random(0)
    offsets = {crop_offset((600, 512), (512, 512), random_crop=True, rng=rng) for _ in range(400)}
    assert all(0 <= x <= 88 and y == 0 for x, y in offsets)
    assert len(offsets) > 50


def test_batching_and_steps():
    assert batches_for(5, 2) == 3
    assert batches_for(0, 2) == 0
    assert steps_per_epoch(7, 2) == 4
    assert steps_per_epoch(7, 2, processes=2) == 2


def test_bucket_info_and_mean_ar_error():
    a = [Assignment((96, 64), (64, 64), (96, 64)), Assignment((64, 64), (64, 64), (64, 64)),
         Assignment((128, 64), (128, 64), (128, 64))]
    info = bucket_info(a, [2, 1, 3])
    assert info["buckets"] == {0: {"resolution": [64, 64], "count": 3}, 1: {"resolution": [128, 64], "count": 3}}
    assert info["mean_img_ar_error"] == pytest.approx(0.5 / 3)
    assert bucket_info([], [])["mean_img_ar_error"] == 0.0


def test_bucket_report_partial_and_upscaled():
    a = [Assignment((100, 100), (512, 512), (512, 512)),      # upscaled
         Assignment((512, 512), (512, 512), (512, 512)),
         Assignment((600, 512), (512, 512), (600, 512)),
         Assignment((10, 10), None, None, "too small")]
    r = bucket_report(a, batch_size=2)
    assert len(r.rows) == 1
    row = r.rows[0]
    assert (row.images, row.items, row.batches, row.partial) == (3, 3, 2, 1)
    assert row.upscaled == [0]
    assert r.rejected == [(3, "too small")]
    d = r.to_dict()
    assert d["buckets"][0]["partial_batch_size"] == 1 and d["total_batches"] == 2

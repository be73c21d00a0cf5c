"""Tagger preprocessing against hand-computed arrays, prefetching, bad images."""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from engine.labeling.images import deepdanbooru_pixels, read_batches, wd14_pixels


def test_wd14_pads_wide_image_on_white_centred_and_flips_to_bgr():
    im = Image.new("RGB", (4, 1), (255, 0, 0))           # 4x1 red: pad_y = 3, top = 1
    arr = wd14_pixels(im, 4)
    assert arr.dtype == np.float32 and arr.shape == (4, 4, 3)
    white, red_bgr = [255, 255, 255], [0, 0, 255]
    expected = np.array([[white] * 4, [red_bgr] * 4, [white] * 4, [white] * 4], np.float32)
    np.testing.assert_array_equal(arr, expected)


def test_wd14_pads_tall_image_left_by_half_the_padding():
    im = Image.new("RGB", (2, 5), (10, 20, 30))          # pad_x = 3 -> left 1, right 2
    arr = wd14_pixels(im, 5)
    np.testing.assert_array_equal(arr[:, 0], np.full((5, 3), 255.0))
    np.testing.assert_array_equal(arr[:, 1:3], np.broadcast_to(np.array([30, 20, 10], np.float32), (5, 2, 3)))
    np.testing.assert_array_equal(arr[:, 3:], np.full((5, 2, 3), 255.0))


def test_wd14_shrinks_by_area_and_keeps_0_255_range():
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[:2, :2] = (100, 0, 0)
    pixels[:2, 2:] = (0, 200, 0)
    pixels[2:, :2] = (0, 0, 60)
    pixels[2:, 2:] = (40, 80, 120)
    pixels[0, 0] = (104, 0, 0)                           # block mean 101 -> area averages
    arr = wd14_pixels(Image.fromarray(pixels, "RGB"), 2)
    expected_rgb = np.array([[[101, 0, 0], [0, 200, 0]], [[0, 0, 60], [40, 80, 120]]], np.float32)
    np.testing.assert_array_equal(arr, expected_rgb[:, :, ::-1])


def test_wd14_enlarges_with_lanczos():
    pixels = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8).repeat(2, axis=0)   # 2x2, left black
    im = Image.fromarray(pixels, "RGB")
    arr = wd14_pixels(im, 8)
    lanczos = np.asarray(im.resize((8, 8), Image.Resampling.LANCZOS), np.float32)[:, :, ::-1]
    np.testing.assert_array_equal(arr, lanczos)
    assert not np.array_equal(arr, np.asarray(im.resize((8, 8), Image.Resampling.NEAREST), np.float32))


def test_deepdanbooru_fits_centres_and_replicates_edges():
    pixels = np.zeros((2, 4, 3), np.uint8)               # 4 wide, 2 high
    pixels[0] = (255, 0, 0)
    pixels[1] = (0, 0, 255)
    arr = deepdanbooru_pixels(Image.fromarray(pixels, "RGB"), 4, 4)
    assert arr.shape == (4, 4, 3) and arr.dtype == np.float32
    red, blue = np.array([1.0, 0, 0], np.float32), np.array([0, 0, 1.0], np.float32)
    # centred at rows 1..2; row 0 repeats the red top row, row 3 the blue bottom row; RGB, /255
    for row, colour in ((0, red), (1, red), (2, blue), (3, blue)):
        np.testing.assert_array_equal(arr[row], np.broadcast_to(colour, (4, 3)))


def test_deepdanbooru_shrinks_keeping_aspect():
    im = Image.new("RGB", (8, 4), (51, 102, 153))
    arr = deepdanbooru_pixels(im, 4, 4)
    np.testing.assert_allclose(arr, np.broadcast_to(np.array([0.2, 0.4, 0.6], np.float32), (4, 4, 3)), atol=1e-6)


def test_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "t.png"
    Image.new("RGBA", (2, 2), (255, 0, 0, 0)).save(path)
    batches = list(read_batches([path], 1, lambda im: wd14_pixels(im, 2), np.stack))
    np.testing.assert_array_equal(batches[0].inputs[0], np.full((2, 2, 3), 255.0))


def test_prefetcher_batches_in_order_and_reports_bad_files(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (3, 3), (i, i, i)).save(p)
        paths.append(p)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    order = paths[:2] + [bad] + paths[2:]
    batches = list(read_batches(order, 2, lambda im: np.asarray(im)[0, 0, 0], list, depth=1))
    assert [b.paths for b in batches] == [paths[:2], [paths[2]], paths[3:]]
    assert [b.inputs for b in batches] == [[0, 1], [2], [3, 4]]
    assert batches[1].failed[0][0] == bad and batches[1].failed[0][1]


def test_prefetcher_close_stops_the_thread(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (3, 3)).save(p)
        paths.append(p)
    batches = read_batches(paths, 1, lambda im: 0, list, depth=1)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("sdft-label-prefetch")]

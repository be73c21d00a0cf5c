"""Masked loss: the mask weights the loss per latent pixel (kohya's apply_masked_loss), follows
the image through resize, crop and flip, survives the latent cache, and the health check and
--check report what is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import make_run

from engine.events import ListSink, StepMetrics
from engine.runner import run_training
from engine.train import objective as obj


def _losses(sink: ListSink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of(StepMetrics)}


# ---------------------------------------------------------------- the loss


def test_an_all_ones_mask_gives_the_unmasked_loss_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    elements = torch.rand((3, 4, 8, 6), generator=gen)
    weights = torch.rand((3,), generator=gen)
    ones = torch.ones((3, 1, 8, 6))
    assert torch.equal(obj.sample_losses(obj.apply_mask(elements, ones), weights).mean(), obj.sample_losses(elements, weights).mean())
    assert obj.apply_mask(elements, None) is elements


def test_a_half_mask_gives_the_masked_half_no_weight():
    gen = torch.Generator().manual_seed(1)
    elements = torch.rand((2, 4, 8, 8), generator=gen)
    weights = torch.ones(2)
    half = torch.ones((2, 1, 8, 8))
    half[..., :4] = 0.0
    masked = obj.sample_losses(obj.apply_mask(elements, half), weights).mean()
    # the mean stays over every pixel (kohya does not divide by the mask's area)
    expected = (elements[..., 4:].sum(dim=(1, 2, 3)) / elements[0].numel()).mean()
    assert torch.allclose(masked, expected)
    changed = elements.clone()
    changed[..., :4] = 1000.0                         # anything under the zero half
    assert torch.equal(obj.sample_losses(obj.apply_mask(changed, half), weights).mean(), masked)


# ---------------------------------------------------------------- the mask's pixels


def _rgba(path, size, alpha: np.ndarray):
    """An RGBA image whose red channel repeats its alpha (so the two can be compared)."""
    rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 0] = alpha
    rgba[..., 1] = 90
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(path)


def test_the_mask_is_resized_and_cropped_exactly_as_the_image(tmp_path):
    from engine.data.buckets import crop_offset
    from engine.data.images import open_rgb, resize_crop
    from engine.data.masks import MaskSource, latent_mask, mask_pixels

    rng = np.random.default_rng(0)
    alpha = rng.integers(1, 256, (70, 130)).astype(np.uint8)
    _rgba(tmp_path / "a.png", (130, 70), alpha)
    Image.fromarray(alpha, "L").save(tmp_path / "m.png")
    resized, bucket = (119, 64), (64, 64)
    offset = crop_offset(resized, bucket)
    for interpolation in ("lanczos", "area", "bilinear"):
        expected = resize_crop(Image.fromarray(alpha, "L").convert("RGB"), resized, bucket, offset, interpolation)[..., 0]
        for source in (MaskSource("alpha", tmp_path / "a.png"), MaskSource("file", tmp_path / "m.png")):
            pixels = mask_pixels(source, (130, 70), resized, bucket, offset, interpolation=interpolation)
            assert pixels.shape == (64, 64) and pixels.dtype == np.float32
            assert np.array_equal(np.round(pixels * 255).astype(np.uint8), expected)
    # the image's own red channel went through the same resize and crop
    image = resize_crop(open_rgb(tmp_path / "a.png"), resized, bucket, offset, "lanczos")
    assert image.shape == (64, 64, 3)
    grid = latent_mask(np.ones((64, 48), dtype=np.float32) * np.arange(48, dtype=np.float32) / 47)
    assert grid.shape == (1, 8, 6)
    assert torch.allclose(grid[0, 0], torch.tensor([np.arange(i * 8, i * 8 + 8).mean() / 47 for i in range(6)],
                                                   dtype=torch.float32))


def test_an_image_without_alpha_counts_everywhere_and_a_wrong_size_mask_is_refused(tmp_path):
    from engine.data.masks import MaskError, MaskSource, mask_pixels

    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "rgb.png")
    ones = mask_pixels(MaskSource("alpha", tmp_path / "rgb.png"), (64, 64), (64, 64), (64, 64), (0, 0),
                       interpolation=None)
    assert (ones == 1.0).all()
    Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
    with pytest.raises(MaskError, match="must have its image's size"):
        mask_pixels(MaskSource("file", tmp_path / "small.png"), (64, 64), (64, 64), (64, 64), (0, 0),
                    interpolation=None)


# ---------------------------------------------------------------- training runs


def _masked_dataset(folder, *, alpha_values, mask_values=None):
    """The train_helpers dataset re-saved as RGBA with a left/right alpha split (and a mask folder)."""
    run = folder / "images"
    masks = folder / "masks"
    masks.mkdir(exist_ok=True)
    for path in sorted(run.glob("*.png")):
        im = Image.open(path).convert("RGBA")
        w, h = im.size
        alpha = np.full((h, w), alpha_values[1], dtype=np.uint8)
        alpha[:, : w // 2] = alpha_values[0]
        arr = np.asarray(im).copy()
        arr[..., 3] = alpha
        Image.fromarray(arr, "RGBA").save(path)
        values = mask_values or alpha_values
        mask = np.full((h, w), values[1], dtype=np.uint8)
        mask[:, : w // 2] = values[0]
        Image.fromarray(mask, "L").save(masks / path.name)


def _run(folder, model, *, subset_extra="", train_extra="", steps=3, restart=False):
    config = make_run(folder, model, steps=steps, train_extra=train_extra)
    if subset_extra:
        config.write_text(config.read_text().replace('metadata_file = "meta.json"\n',
                                                     f'metadata_file = "meta.json"\n  {subset_extra}\n'))
    sink = ListSink()
    result = run_training(config, sink=sink, restart=restart)   # restart: again in the same folder
    assert result.status == "completed", result.message
    return sink


def test_fully_opaque_alpha_masks_train_exactly_like_no_masks(tmp_path, tiny_sd1, plain_run):
    plain, _result = plain_run(3)          # _run's file without masks
    folder = tmp_path / "alpha"
    make_run(folder, tiny_sd1)
    _masked_dataset(folder, alpha_values=(255, 255))
    opaque = _run(folder, tiny_sd1, subset_extra="alpha_mask = true", train_extra="masked_loss = true")
    assert _losses(opaque) == _losses(plain)


def test_alpha_masks_and_a_mask_folder_train_the_same_and_survive_the_cache(tmp_path, tiny_sd1, plain_run):
    plain, _result = plain_run(3)
    runs = {}
    for name, extra in (("alpha", "alpha_mask = true"), ("folder", 'conditioning_data_dir = "masks"')):
        folder = tmp_path / name
        make_run(folder, tiny_sd1)
        _masked_dataset(folder, alpha_values=(0, 255))
        runs[name] = _run(folder, tiny_sd1, subset_extra=extra, train_extra="masked_loss = true")
    assert _losses(runs["alpha"]) == _losses(runs["folder"])      # one mask, two sources
    assert _losses(runs["alpha"]) != _losses(plain)
    # the second run reads every latent and mask from the cache: the same losses
    folder = tmp_path / "folder"
    again = _run(folder, tiny_sd1, subset_extra='conditioning_data_dir = "masks"', train_extra="masked_loss = true",
                 restart=True)
    assert _losses(again) == _losses(runs["folder"])
    from safetensors.torch import load_file

    entries = list((folder / "runs" / ".latent-cache").glob("??/*.safetensors"))
    assert entries and all("mask" in load_file(str(e)) for e in entries)
    # a changed mask is a new entry (the key holds the mask file's hash), not a stale one
    from engine.data.cache_prune import manifest_path

    manifest_file = manifest_path(folder / "runs" / ".latent-cache", folder / "runs" / "t")
    manifest = json.loads(manifest_file.read_text())["keys"]
    _masked_dataset(folder, alpha_values=(0, 255), mask_values=(255, 0))
    flipped = _run(folder, tiny_sd1, subset_extra='conditioning_data_dir = "masks"', train_extra="masked_loss = true",
                   restart=True)
    assert not set(manifest) & set(json.loads(manifest_file.read_text())["keys"])
    assert _losses(flipped) != _losses(runs["folder"])


def test_live_subsets_are_masked_too(tmp_path, tiny_sd1):
    """cache.latents = "none" encodes every batch live; the masks come from the same pixels."""
    figures = {}
    for name, subset_extra in (("plain", ""), ("masked", "  alpha_mask = true\n")):
        folder = tmp_path / name
        config = make_run(folder, tiny_sd1, steps=3, cache="none")
        _masked_dataset(folder, alpha_values=(0, 255))
        config.write_text(config.read_text().replace('metadata_file = "meta.json"\n',
                                                     f'metadata_file = "meta.json"\n  flip_aug = true\n{subset_extra}'))
        sink = ListSink()
        assert run_training(config, sink=sink).status == "completed"
        figures[name] = _losses(sink)
    assert figures["plain"].keys() == figures["masked"].keys() == {1, 2, 3}
    assert all(figures["masked"][s] < figures["plain"][s] for s in figures["plain"])   # half the pixels weigh 0


# ---------------------------------------------------------------- the health check and --check


def test_the_health_check_reports_missing_unusable_and_empty_masks(tmp_path):
    from engine.data.health import check_images
    from engine.data.masks import MaskError, MaskSource

    paths = []
    for i in range(4):
        Image.new("RGBA", (64, 64), (i * 50, 2, 3, 0 if i == 2 else 255)).save(tmp_path / f"i{i}.png")
        paths.append(tmp_path / f"i{i}.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
    masks = [MaskError("no mask for i0.png in masks"), MaskSource("file", tmp_path / "small.png"),
             MaskSource("alpha", paths[2]), MaskSource("alpha", paths[3])]
    report = check_images(paths, masks=masks, sidecar_extensions=None)
    kinds = {(issue.path.rsplit("/", 1)[-1], issue.kind) for issue in report.issues}
    assert {("i0.png", "no_mask"), ("i1.png", "bad_mask"), ("i2.png", "empty_mask")} <= kinds
    assert not any(i.path.endswith("i3.png") and "mask" in i.kind for i in report.issues)   # a good mask
    assert {i.kind for i in report.errors} == {"no_mask", "bad_mask"}


def test_prepare_on_a_run_file_checks_its_masks(tmp_path, tiny_sd1):
    from engine.data.cli import prepare_command

    config = make_run(tmp_path, tiny_sd1)
    _masked_dataset(tmp_path, alpha_values=(0, 0))          # every mask empty
    (tmp_path / "masks" / "im1.png").unlink()
    config.write_text(config.read_text().replace('metadata_file = "meta.json"\n',
                                                 'metadata_file = "meta.json"\n  conditioning_data_dir = "masks"\n')
                      .replace("[train]\n", "[train]\nmasked_loss = true\n", 1))
    assert prepare_command([str(config), "--json"]) != 0


def test_check_names_the_image_whose_mask_is_missing(tmp_path, tiny_sd1):
    from engine.preflight.checks import check_run_file

    config = make_run(tmp_path, tiny_sd1)
    _masked_dataset(tmp_path, alpha_values=(0, 255))
    (tmp_path / "masks" / "im4.png").unlink()
    config.write_text(config.read_text().replace('metadata_file = "meta.json"\n',
                                                 'metadata_file = "meta.json"\n  conditioning_data_dir = "masks"\n')
                      .replace("[train]\n", "[train]\nmasked_loss = true\n", 1))
    _config, problems = check_run_file(config)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1 and errors[0].key == "datasets[0].subsets[0].conditioning_data_dir"
    assert "im4.png" in errors[0].message
    config.write_text(config.read_text().replace('conditioning_data_dir = "masks"\n', ""))
    _config, problems = check_run_file(config)
    refused = [p for p in problems if p.key == "train.masked_loss"]
    assert refused and "a mask source" in refused[0].message

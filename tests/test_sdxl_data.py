"""SDXL batches carry each image's size and crop numbers, recorded as kohya records them
(engine/data/size_conditioning.py over engine/families/sdxl/conditioning.py); SD batches carry none."""

import json

import numpy as np
import pytest
import torch
from data_helpers import make_dataset, run_config

from engine.data.metadata import build_metadata, write_metadata_json
from engine.data.pipeline import TrainingData
from engine.families import family
from engine.families.sdxl.conditioning import SizeConditioning, fit_inside_ltrb

SIZES = [(64, 64), (96, 64), (64, 96), (80, 64), (128, 64), (100, 70), (63, 64)]
TOML = """
[general]
enable_bucket = true
resolution = 64
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
batch_size = 2

[[datasets]]
  [[datasets.subsets]]
  metadata_file = "meta.json"
  image_dir = "imgs"
  num_repeats = 3
  flip_aug = true
  {extra}
"""


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    from engine.families.sdxl.tiny import tiny_vae_config

    torch.manual_seed(0)
    return AutoencoderKL(**tiny_vae_config()).eval()


@pytest.fixture()
def dataset(tmp_path):
    make_dataset(tmp_path / "imgs", SIZES)
    write_metadata_json(tmp_path / "meta.json", build_metadata(tmp_path / "imgs"))
    return tmp_path


def kohya_numbers(size, bucket, flipped):
    """kohya's __getitem__ written out: get_crop_ltrb, then left = target w - right when flipped."""
    left, top, right, _bottom = fit_inside_ltrb(bucket, size)
    if flipped:
        left = bucket[0] - right
    return (size[1], size[0], int(top), int(left), bucket[1], bucket[0])


def all_batches(data, epochs=3):
    for epoch in range(1, epochs + 1):
        for position, ref in enumerate(data.epoch_plan(epoch)):
            yield ref, data.load_batch(ref, epoch=epoch, global_step=position, position=position)


def flipped_rows(batch, data, ref):
    """Which rows of a cached batch were mirrored: the latent equals the entry's flipped mean."""
    out = []
    for row, index in enumerate(ref.items):
        tensors = data._latents[index].load()
        out.append(torch.equal(batch.latents[row], tensors["mean_flipped"].float()))
    return out


@pytest.mark.parametrize("extra", ["", "random_crop = true"])
def test_batches_carry_kohya_numbers(dataset, vae, extra):
    cfg = run_config(dataset, TOML.format(extra=extra), cache={"latent_sampling": "mean"})
    data = TrainingData.from_config(cfg, family=family("sdxl"), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    seen = set()
    for ref, batch in all_batches(data):
        assert len(batch.size_conditioning) == len(ref.items)
        if ref.live:   # random crop: encoded live, no flipped entry to tell flips by; both numbers allowed
            for index, cond in zip(ref.items, batch.size_conditioning, strict=True):
                item = data.items[index]
                assert cond.time_ids() in {kohya_numbers(item.size, item.bucket, f) for f in (False, True)}
                seen.add((index, cond.time_ids()))
            continue
        for index, cond, flipped in zip(ref.items, batch.size_conditioning, flipped_rows(batch, data, ref),
                                        strict=True):
            item = data.items[index]
            assert isinstance(cond, SizeConditioning)
            assert cond.time_ids() == kohya_numbers(item.size, item.bucket, flipped)
            seen.add((index, flipped))
    if not extra:   # over three epochs both twins of every cropped image came up
        assert {flipped for _index, flipped in seen} == {False, True}


def test_random_crop_keeps_the_numbers(dataset, vae):
    """kohya records where the image would sit fitted inside the bucket, whatever the crop taken."""
    cfg = run_config(dataset, TOML.format(extra="random_crop = true").replace("  flip_aug = true\n", ""))
    data = TrainingData.from_config(cfg, family=family("sdxl"), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    wide = next(it for it in data.items if it.size == (128, 64))
    numbers = set()
    for epoch in range(1, 6):
        plan = data.epoch_plan(epoch)
        position, ref = next((p, r) for p, r in enumerate(plan) if wide.index in r.items)
        batch = data.load_batch(ref, epoch=epoch, global_step=0, position=position)
        numbers.add(batch.size_conditioning[ref.items.index(wide.index)].time_ids())
    # 128x64 in the 64x64 bucket (cut left and right): fitted inside it is 64 wide and 32 high,
    # centred, so kohya records top 16, left 0
    assert wide.bucket == (64, 64)
    assert numbers == {(64, 128, 16, 0, 64, 64)} == {kohya_numbers(wide.size, wide.bucket, False)}


def test_cache_entry_records_both_twins(dataset, vae):
    from safetensors import safe_open

    cfg = run_config(dataset, TOML.format(extra=""))
    data = TrainingData.from_config(cfg, family=family("sdxl"), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    for item in data.items:
        entry = data._latents[item.index]
        with safe_open(str(entry.file), framework="pt") as fh:
            recorded = json.loads(fh.metadata()["sdft.size_conditioning"])
        assert tuple(recorded["plain"]) == kohya_numbers(item.size, item.bucket, False)
        assert tuple(recorded["flipped"]) == kohya_numbers(item.size, item.bucket, True)
    # 63x64 fitted inside the 64x64 bucket spans 0..63: left 0, mirrored left 1
    narrow = next(it for it in data.items if it.size == (63, 64))
    with safe_open(str(data._latents[narrow.index].file), framework="pt") as fh:
        recorded = json.loads(fh.metadata()["sdft.size_conditioning"])
    assert recorded == {"plain": [64, 63, 0, 0, 64, 64], "flipped": [64, 63, 0, 1, 64, 64]}


def test_unbucketed_numbers(dataset, vae):
    toml = TOML.format(extra="").replace("enable_bucket = true", "enable_bucket = false")
    cfg = run_config(dataset, toml, cache={"latent_sampling": "mean"})
    data = TrainingData.from_config(cfg, family=family("sdxl"), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    for ref, batch in all_batches(data, epochs=2):
        for cond, flipped in zip(batch.size_conditioning, flipped_rows(batch, data, ref), strict=True):
            assert cond.time_ids() == (64, 64, 0, 64 if flipped else 0, 64, 64)


def test_validation_batches_are_not_flipped(dataset, vae):
    toml = TOML.format(extra="").replace("batch_size = 2", "batch_size = 2\nvalidation_split = 0.5")
    cfg = run_config(dataset, toml, train={"seed": 3})
    data = TrainingData.from_config(cfg, family=family("sdxl"), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    refs = data.validation_plan()
    assert refs
    for ref in refs:
        batch = data.load_validation_batch(ref, seed=3)
        for index, cond in zip(ref.items, batch.size_conditioning, strict=True):
            item = data.items[index]
            assert cond.time_ids() == kohya_numbers(item.size, item.bucket, False)


def test_sd_batches_carry_none(dataset, vae):
    data = TrainingData.from_config(run_config(dataset, TOML.format(extra="")), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    for _ref, batch in all_batches(data, epochs=1):
        assert batch.size_conditioning is None
    with_family = TrainingData.from_config(run_config(dataset, TOML.format(extra="")), family=family("sd1"),
                                           log=lambda s: None)
    assert not with_family.size_conditioning


def test_sdxl_imports_only_sdxl_npz(dataset, vae):
    """An SDXL run takes kohya's sdxl_train.py latents, never the old <stem>.npz an SD run may have left."""
    img = dataset / "imgs" / "img000.png"     # 64x64: bucket (64, 64), latent (4, 8, 8)
    lat = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
    np.savez(dataset / "imgs" / "img000.npz", latents=lat, latents_flipped=lat[:, :, ::-1].copy())
    cfg = run_config(dataset, TOML.format(extra=""))
    data = TrainingData.from_config(cfg, family=family("sdxl"), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    assert data.cache_result.imported == 0
    np.savez(dataset / "imgs" / "img000_0064x0064_sdxl.npz", latents_8x8=lat, latents_flipped_8x8=lat[:, :, ::-1].copy())
    for file in (dataset / "runs").rglob("*.safetensors"):
        file.unlink()
    data = TrainingData.from_config(cfg, family=family("sdxl"), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    assert data.cache_result.imported == 1
    entry = data._latents[next(it.index for it in data.items if it.path == img)]
    assert entry.kohya and torch.equal(entry.load()["mean"], torch.from_numpy(lat))

"""TrainingData end to end on a tiny VAE; latent cache reuse, verification and kohya npz import."""

import json
import os
import time

import numpy as np
import pytest
import torch
from data_helpers import make_dataset, make_image, run_config

from engine.data.cache import entry_path
from engine.data.metadata import build_metadata, write_metadata_json
from engine.data.pipeline import TrainingData

SIZES = [(64, 64), (96, 64), (64, 96), (80, 64), (128, 64), (64, 64), (100, 70)]
TOML = """
[general]
enable_bucket = true
resolution = 64
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
batch_size = 2
shuffle_caption = true
keep_tokens = 1

[[datasets]]
  [[datasets.subsets]]
  metadata_file = "meta.json"
  image_dir = "imgs"
  num_repeats = 2
  flip_aug = true
"""


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    from engine.models.tiny import TinySpec, tiny_vae_config

    torch.manual_seed(0)
    return AutoencoderKL(**tiny_vae_config(TinySpec())).eval()


@pytest.fixture()
def dataset(tmp_path):
    make_dataset(tmp_path / "imgs", SIZES)
    write_metadata_json(tmp_path / "meta.json", build_metadata(tmp_path / "imgs"))
    return tmp_path


def logs():
    out = []
    return out, out.append


def test_end_to_end_batches(dataset, vae):
    cfg = run_config(dataset, TOML)
    lines, log = logs()
    data = TrainingData.from_config(cfg, log=log)
    assert data.num_images == 7
    # buckets (32 steps, area 4096): (32,96) (32,128) (64,64) (96,32) (128,32)
    info = data.bucket_info
    assert {tuple(b["resolution"]): b["count"] for b in info["buckets"].values()} == {(32, 96): 2, (64, 64): 12}
    assert data.batches_per_epoch() == 1 + 6
    assert data.tag_frequency == {"meta.json": {"common": 7, "red": 7, "tag0": 3, "tag1": 2, "tag2": 2}}
    assert len(data.fingerprint) == 64
    progress = []
    data.prepare_latents(vae, "cpu", torch.float32, progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (7, 7)
    plan = data.epoch_plan(1)
    assert plan == data.epoch_plan(1)                      # pure function of (seed, epoch)
    assert plan != data.epoch_plan(2)
    assert sorted(i for ref in plan for i in ref.items) == sorted(list(range(7)) * 2)
    for position, ref in enumerate(plan):
        batch = data.load_batch(ref, epoch=1, global_step=position, position=position)
        bw, bh = ref.bucket
        assert batch.pixels is None
        assert batch.latents.shape == (len(ref.items), 4, bh // 8, bw // 8)
        assert torch.isfinite(batch.latents).all()
        assert len(batch.captions) == len(ref.items) and batch.keys == [data.items[i].key for i in ref.items]
        for cap in batch.captions:
            assert cap.startswith("a photo number")          # keep_tokens = 1 keeps the caption first
    # the same draw again gives identical tensors and captions (per-sample RNG)
    a = data.load_batch(plan[0], epoch=1, global_step=0, position=0)
    b = data.load_batch(plan[0], epoch=1, global_step=0, position=0)
    assert torch.equal(a.latents, b.latents) and a.captions == b.captions
    c = data.load_batch(plan[0], epoch=2, global_step=0, position=0)
    assert not torch.equal(a.latents, c.latents)          # a fresh posterior draw


def test_cache_reuse_after_editing_one_image(dataset, vae):
    cfg = run_config(dataset, TOML)
    data = TrainingData.from_config(cfg, log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    assert data.cache_result.encoded == 7
    cache_dir = data.cache_dir
    from engine.data.cache_prune import manifest_path

    assert (cache_dir / "index.json").is_file() and manifest_path(cache_dir, cfg.run_dir()).is_file()
    again = TrainingData.from_config(cfg, log=lambda s: None)
    again.prepare_latents(vae, "cpu")
    assert (again.cache_result.encoded, again.cache_result.reused) == (0, 7)
    # edit one image (same size, new pixels): only it is re-encoded
    make_image(dataset / "imgs" / "img003.png", SIZES[3], seed=99)
    t = time.time() + 5
    os.utime(dataset / "imgs" / "img003.png", (t, t))
    third = TrainingData.from_config(cfg, log=lambda s: None)
    third.prepare_latents(vae, "cpu")
    assert (third.cache_result.encoded, third.cache_result.reused) == (1, 6)
    # a corrupted entry (wrong shape) is detected and re-encoded
    from safetensors.torch import save_file

    victim = third._latents[0].file
    save_file({"mean": torch.zeros(4, 2, 2), "std": torch.zeros(4, 2, 2)}, str(victim))
    fourth = TrainingData.from_config(cfg, log=lambda s: None)
    fourth.prepare_latents(vae, "cpu")
    assert (fourth.cache_result.encoded, fourth.cache_result.reused) == (1, 6)


def test_live_subsets_and_memory_cache(dataset, vae):
    toml = TOML.replace("flip_aug = true", "flip_aug = true\n  random_crop = true") + """
  [[datasets.subsets]]
  metadata_file = "meta2.json"
  image_dir = "imgs"
"""
    write_metadata_json(dataset / "meta2.json", build_metadata(dataset / "imgs"))
    cfg = run_config(dataset, toml, cache={"latents": "memory"})
    lines, log = logs()
    data = TrainingData.from_config(cfg, log=log)
    assert any("encoded live" in line for line in lines)
    data.prepare_latents(vae, "cpu")
    assert data.cache_result.encoded == 7 and data.cache_dir is None
    plan = data.epoch_plan(3)
    kinds = set()
    for pos, ref in enumerate(plan):
        batch = data.load_batch(ref, epoch=3, global_step=10, position=pos)
        live = {data.items[i].subset.random_crop for i in ref.items}
        assert len(live) == 1                                   # never mixed
        if ref.live:
            bw, bh = ref.bucket
            assert batch.latents is None and batch.pixels.shape == (len(ref.items), 3, bh, bw)
            assert batch.pixels.min() >= -1 and batch.pixels.max() <= 1
        else:
            assert batch.pixels is None and batch.latents is not None
        kinds.add(ref.live)
    assert kinds == {True, False}


def test_no_cache_mode_is_all_pixels(dataset):
    cfg = run_config(dataset, TOML, cache={"latents": "none"})
    data = TrainingData.from_config(cfg, log=lambda s: None)
    ref = data.epoch_plan(1)[0]
    assert ref.live and data.load_batch(ref, epoch=1, global_step=0, position=0).pixels is not None


def test_bad_image_skipped_not_fatal(dataset, vae):
    (dataset / "imgs" / "img002.png").write_bytes(b"garbage")
    meta = json.loads((dataset / "meta.json").read_text())
    cfg = run_config(dataset, TOML)
    lines, log = logs()
    data = TrainingData.from_config(cfg, log=log)        # size comes from metadata image_size
    data.prepare_latents(vae, "cpu")
    assert 2 in data._excluded and len(data.cache_result.failed) == 1
    assert all(2 not in ref.items for ref in data.epoch_plan(1))
    assert "img002.png" in meta


def test_pinned_train_resolution(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    for entry in meta.values():
        entry["train_resolution"] = [64, 64]
    (dataset / "meta.json").write_text(json.dumps(meta))
    data = TrainingData.from_config(run_config(dataset, TOML), log=lambda s: None)
    assert {it.bucket for it in data.items} == {(64, 64)}
    assert data.items[4].resized == (128, 64)               # cover resize, then crop


@pytest.mark.parametrize("era", ["2022", "2023", "head"])
def test_kohya_npz_import(dataset, vae, era):
    from engine.data.cache import import_kohya_npz

    img = dataset / "imgs" / "img000.png"                 # 64x64 -> bucket (64, 64) -> latent (4, 8, 8)
    lat = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
    flipped = lat[:, :, ::-1].copy()
    if era == "2022":
        np.savez(dataset / "imgs" / "img000.npz", lat)
        np.savez(dataset / "imgs" / "img000_flip.npz", flipped)
    elif era == "2023":
        np.savez(dataset / "imgs" / "img000.npz", latents=lat, original_size=np.array([64, 64]),
                 crop_ltrb=np.array([0, 0, 0, 0]), latents_flipped=flipped)
    else:
        # an SDXL run's file beside it is never an SD run's latents (SDXL's VAE)
        np.savez(dataset / "imgs" / "img000_0064x0064_sdxl.npz", latents_8x8=-lat, latents_flipped_8x8=-flipped)
        assert import_kohya_npz(img, (64, 64), (64, 64), flip=True) is None
        np.savez(dataset / "imgs" / "img000_0064x0064_sd.npz", latents_8x8=lat, latents_flipped_8x8=flipped)
    got = import_kohya_npz(img, (64, 64), (64, 64), flip=True)
    assert got is not None
    assert np.allclose(got["mean"].numpy(), lat) and np.allclose(got["mean_flipped"].numpy(), flipped)
    assert float(got["std"].abs().sum()) == 0.0
    assert import_kohya_npz(img, (64, 64), (96, 64), flip=False) is None     # wrong shape: re-encode
    data = TrainingData.from_config(run_config(dataset, TOML), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    assert data.cache_result.imported == 1 and data.cache_result.encoded == 6
    idx = next(it.index for it in data.items if it.path.name == "img000.png")
    z1 = data._latent(data.items[idx], False, 1)
    z2 = data._latent(data.items[idx], False, 2)
    assert torch.allclose(z1, torch.from_numpy(lat)) and torch.equal(z1, z2)   # kohya mode: fixed draw


def test_cache_entry_metadata(dataset, vae):
    from safetensors import safe_open

    data = TrainingData.from_config(run_config(dataset, TOML), log=lambda s: None)
    data.prepare_latents(vae, "cpu")
    entry = data._latents[0]
    assert entry.file == entry_path(data.cache_dir, entry.key)
    with safe_open(str(entry.file), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"mean", "std", "mean_flipped", "std_flipped"}
    assert meta["sdft.cache_version"] == "1" and json.loads(meta["sdft.bucket"]) == list(data.items[0].bucket)
    assert meta["sdft.encode_dtype"] == "float32" and len(meta["sdft.vae_id"]) == 64


def test_vae_batches_never_mix_flip_and_plain_jobs(tmp_path, vae):
    """Two subsets share a bucket, only one has flip_aug: both must get complete entries."""
    from engine.data.cache import CacheJob, LatentCache

    paths = []
    for name in ("a", "b", "c"):
        paths.append(make_image(tmp_path / f"{name}.png", (64, 64)))
    jobs = [CacheJob(i, p, (64, 64), (64, 64), (64, 64), (0, 0), "area", flip=(i != 0))
            for i, p in enumerate(paths)]
    cache = LatentCache(tmp_path / "cache", mode="memory")
    result = cache.prepare(jobs, vae, "cpu", torch.float32, vae_batch_size=4, log=lambda _m: None)
    assert result.failed == {}
    assert set(result.latents) == {0, 1, 2}
    assert "mean_flipped" not in result.latents[0].tensors
    for i in (1, 2):
        assert result.latents[i].tensors["mean_flipped"].shape == (4, 8, 8)


def test_bucket_info_has_no_ar_error_without_bucketing(dataset):
    """mean_img_ar_error is computed and logged only when bucketing is on."""
    cfg = run_config(dataset, TOML.replace("enable_bucket = true", "enable_bucket = false"))
    info = TrainingData.from_config(cfg, log=lambda s: None).bucket_info
    assert "mean_img_ar_error" not in info
    assert {tuple(b["resolution"]) for b in info["buckets"].values()} == {(64, 64)}


def test_stopped_caching_keeps_the_image_hash_index(dataset, vae):
    """A stop during encoding (progress raises) still saves index.json, so the next run
    does not re-hash every image."""
    cfg = run_config(dataset, TOML)
    data = TrainingData.from_config(cfg, log=lambda s: None)

    class Stop(Exception):
        pass

    def progress(done, total):
        raise Stop()

    with pytest.raises(Stop):
        data.prepare_latents(vae, "cpu", progress=progress)
    index = json.loads((data.cache_dir / "index.json").read_text())
    assert len(index["images"]) == 7


def test_kohya_npz_older_than_its_image_is_not_imported(dataset):
    import os

    from engine.data.cache import import_kohya_npz

    img = dataset / "imgs" / "img000.png"
    lat = np.zeros((4, 8, 8), dtype=np.float32)
    npz = dataset / "imgs" / "img000.npz"
    np.savez(npz, latents=lat)
    os.utime(npz, (1_000_000, 1_000_000))                  # cached long before the image was edited
    assert import_kohya_npz(img, (64, 64), (64, 64), flip=False) is None
    os.utime(npz, None)                                     # a fresh cache file is used
    assert import_kohya_npz(img, (64, 64), (64, 64), flip=False) is not None

"""Every field of the latent cache key matters (engine/data/cache_keys.py, docs/formats.md): an
entry is reused only for the same image, bucket, resize, crop, flip, interpolation, EXIF handling,
VAE, encode dtype, stored dtype and mask. Changing any one of them encodes the image again; a key
that forgot one would hand a run latents of another picture (a mutation check found that only the
docs-consistency test noticed the VAE missing)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from PIL import Image

from engine.data.cache import LatentCache
from engine.data.cache_keys import CacheJob


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    from engine.models.tiny import TinySpec, tiny_vae_config

    torch.manual_seed(0)
    return AutoencoderKL(**tiny_vae_config(TinySpec("sd1"))).eval()


@pytest.fixture()
def job(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (96, 64), (200, 40, 90)).save(path)
    return CacheJob(item=0, path=path, size=(96, 64), bucket=(64, 64), resized=(96, 64), offset=(16, 0),
                    interpolation="area", flip=False)


def _prepare(cache_dir, job, vae, dtype=torch.float32, store="float32"):
    """Prepare one job; a changed job must get a new key, so it is encoded quietly: an old entry
    found under the same key and rejected (wrong shape, no flipped half) is logged as damaged."""
    cache = LatentCache(cache_dir, mode="disk", store_dtype=store)
    vae = copy.deepcopy(vae)     # encoding casts the VAE to the encode dtype in place
    said: list[str] = []
    result = cache.prepare([job], vae, torch.device("cpu"), dtype, log=said.append, workers=1)
    assert not [line for line in said if "damaged" in line], said
    return result


CHANGES = {
    "crop": dict(offset=(0, 0)),
    "flip": dict(flip=True),
    "interpolation": dict(interpolation="lanczos"),
    # another bucket and resize, the same crop offset: only the geometry fields tell them apart
    "resolution": dict(bucket=(128, 96), resized=(144, 96)),
    "exif": dict(exif_transpose=False),
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_a_job_field_encodes_again(tmp_path, job, vae, field):
    first = _prepare(tmp_path / "cache", job, vae)
    assert (first.encoded, first.reused) == (1, 0)
    assert _prepare(tmp_path / "cache", job, vae).reused == 1        # the same job: reused
    changed = _prepare(tmp_path / "cache", dataclasses.replace(job, **CHANGES[field]), vae)
    assert (changed.encoded, changed.reused) == (1, 0), field


def test_another_vae_encodes_again(tmp_path, job, vae):
    _prepare(tmp_path / "cache", job, vae)
    other = type(vae)(**vae.config).eval()
    other.load_state_dict(vae.state_dict())
    with torch.no_grad():
        next(other.parameters()).add_(0.01)          # one weight differs
    assert _prepare(tmp_path / "cache", job, other).encoded == 1


def test_the_encode_and_store_dtypes_are_part_of_the_key(tmp_path, job, vae):
    _prepare(tmp_path / "cache", job, vae)
    assert _prepare(tmp_path / "cache", job, vae, dtype=torch.bfloat16).encoded == 1
    assert _prepare(tmp_path / "cache", job, vae, store="float16").encoded == 1
    assert _prepare(tmp_path / "cache", job, vae).reused == 1       # the first entry is still there


def test_a_changed_image_encodes_again(tmp_path, job, vae):
    _prepare(tmp_path / "cache", job, vae)
    Image.new("RGB", (96, 64), (10, 240, 90)).save(job.path)
    assert _prepare(tmp_path / "cache", job, vae).encoded == 1

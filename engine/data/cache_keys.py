"""What names a latent cache entry: the job (everything that decides an image's pixels in
its bucket), the image and VAE identities, the key that hashes them, and the entry's path.

``index.json`` (engine.hashcache.HashIndex) remembers image hashes by path + size + mtime,
so unchanged images are not re-hashed. The key's fields are listed in docs/formats.md ("The latent cache key").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CACHE_VERSION = "1"
INDEX_NAME = "index.json"


@dataclass(frozen=True)
class CacheJob:
    """One image as it enters one bucket: everything that decides its pixels."""

    item: int
    path: Path
    size: tuple[int, int]
    bucket: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    interpolation: str
    flip: bool                      # also encode the mirrored image (flip_aug)
    exif_transpose: bool = True
    kohya_npz: bool = True          # False: a kohya <name>.npz may belong to another image of that name
    mask: Any = None                # engine.data.masks.MaskSource: its latent-grid mask joins the entry
    # SDXL: the entry's size and crop numbers, its flipped twin's too (engine/data/size_conditioning.py):
    # written into the entry's metadata; not in the key, which already covers all they depend on
    size_conditioning: Any = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (4, self.bucket[1] // 8, self.bucket[0] // 8)


def vae_identity(vae) -> str:
    """sha256 over the VAE's tensors in sorted-name order (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    state = vae.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(image_sha256: str, job: CacheJob, vae_id: str, encode_dtype: str, store_dtype: str = "float32",
              mask_id: str | None = None) -> str:
    fields = {
        "image": image_sha256,
        "bucket": list(job.bucket),
        "resized": list(job.resized),
        "crop": list(job.offset),
        "flip": bool(job.flip),
        "interpolation": job.interpolation,
        "exif_transpose": bool(job.exif_transpose),
        "vae": vae_id,
        "dtype": encode_dtype,
        "version": CACHE_VERSION,
    }
    if store_dtype != "float32":   # float32 entries keep the keys they had before this field existed
        fields["store"] = store_dtype
    if mask_id is not None:        # an entry with a loss mask (masked loss); unmasked keys are unchanged
        fields["mask"] = mask_id
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.safetensors"

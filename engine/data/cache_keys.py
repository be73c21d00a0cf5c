"""What names a latent cache entry: the job (everything that decides an image's pixels in
its bucket), the image and VAE identities, the key that hashes them, and the entry's path.

``index.json`` remembers image hashes by path + size + mtime, so unchanged images are not
re-hashed. The key's fields are listed in docs/formats.md ("The latent cache key").
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import atomic

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

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (4, self.bucket[1] // 8, self.bucket[0] // 8)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


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


class ImageHashIndex:
    """``index.json``: path → size, mtime_ns, sha256, so unchanged images are not re-hashed."""

    def __init__(self, cache_dir: Path | None):
        self.file = cache_dir / INDEX_NAME if cache_dir else None
        self.entries: dict[str, dict] = {}
        self.dirty = False
        self.lock = threading.Lock()
        if self.file and self.file.is_file():
            try:
                data = json.loads(self.file.read_text(encoding="utf-8"))
                self.entries = dict(data.get("images", {}))
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, path: Path) -> str:
        key = str(Path(path).resolve())
        st = os.stat(path)
        with self.lock:
            hit = self.entries.get(key)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        digest = file_sha256(path)
        with self.lock:
            self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            self.dirty = True
        return digest

    def save(self) -> None:
        if self.file and self.dirty:
            atomic.write_text(self.file, json.dumps({"version": 1, "images": self.entries}, indent=1, sort_keys=True))
            self.dirty = False


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

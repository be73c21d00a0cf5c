"""Content-addressed latent cache and kohya ``.npz`` import.

An entry's key hashes everything that changes the latent: the image bytes, bucket, resize,
crop, flip, interpolation, the VAE's weights and the encode dtype (cache_keys.py). So a second
run encodes only what changed, and an edited image gets a new entry instead of a stale one
(kohya #931). Files are ``<cache_dir>/<key[:2]>/<key>.safetensors`` with ``mean``/``std`` (and
flipped twins), checked by cache_entries.py; kohya's ``.npz`` files are imported by
kohya_npz.py; manifests and pruning are cache_prune.py.

Decoding and resizing run in a thread pool ahead of the VAE, so the encoder never waits.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

# re-exported: engine.data.cache stays the one import for the cache's public names
from engine.data.cache_entries import check_latents, load_entry, tensors_sha256, write_entry  # noqa: F401
from engine.data.cache_keys import (  # noqa: F401
    CACHE_VERSION,
    INDEX_NAME,
    CacheJob,
    cache_key,
    entry_path,
    vae_identity,
)
from engine.data.cache_prune import (  # noqa: F401 - the cache's one import point
    MANIFEST_DIR,
    prune_cache,
    referenced_keys,
    register_run,
    write_manifest,
)
from engine.data.kohya_npz import import_kohya_npz, kohya_npz_candidates  # noqa: F401
from engine.hashcache import HashIndex, file_sha256  # noqa: F401


@dataclass
class CachedLatent:
    """Where one item's latents live: a file (disk mode) or tensors (memory / kohya import)."""

    key: str
    file: Path | None = None
    tensors: dict[str, torch.Tensor] | None = None
    kohya: bool = False             # a single fixed draw (imported npz): std is zero

    def load(self) -> dict[str, torch.Tensor]:
        if self.tensors is not None:
            return self.tensors
        from safetensors.torch import load_file

        return load_file(str(self.file))


@dataclass
class CacheResult:
    latents: dict[int, CachedLatent] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)       # item -> reason
    encoded: int = 0
    reused: int = 0
    imported: int = 0


# ---------------------------------------------------------------- encoding


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@torch.no_grad()
def _encode(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = vae.encode(pixels).latent_dist
    return dist.mean.float(), dist.std.float()


def encode_pixels(vae, pixels: torch.Tensor, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) in float32; a non-finite half-precision result is redone in fp32 (kohya #653)."""
    x = pixels.to(device=device, dtype=dtype)
    mean, std = _encode(vae, x)
    if dtype != torch.float32 and not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
        _place(vae, device, torch.float32)
        try:
            mean, std = _encode(vae, pixels.to(device=device, dtype=torch.float32))
        finally:
            _place(vae, device, dtype)
    return mean, std


class LatentCache:
    """Fills and serves the cache for one set of jobs.

    ``mode``: "disk" (files under ``cache_dir``) or "memory" (tensors kept in RAM).
    """

    def __init__(self, cache_dir: str | Path | None, *, mode: str = "disk", store_dtype: str = "float32",
                 verify: str = "full", import_kohya: bool = True, kohya_names: tuple[str, ...] | None = None):
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if mode == "disk" and self.cache_dir is None:
            raise ValueError("disk cache needs a cache_dir")
        self.store_dtype = torch.float16 if store_dtype == "float16" else torch.float32
        self.verify = verify
        self.import_kohya = import_kohya
        self.kohya_names = kohya_names   # the family's kohya .npz names (kohya_npz.py); None: SD's
        self.index = HashIndex(self.cache_dir / INDEX_NAME if mode == "disk" else None)

    def prepare(self, jobs: list[CacheJob], vae, device, dtype: torch.dtype, *, vae_batch_size: int = 1,
                vae_id: str | None = None, progress: Callable[[int, int], None] | None = None,
                log: Callable[[str], None] = print, workers: int | None = None) -> CacheResult:
        """Reuse valid entries, import kohya npz, encode the rest; bad images are skipped and reported."""
        result = CacheResult()
        vae_id = vae_id or vae_identity(vae)
        enc_name = _dtype_name(dtype)
        todo: list[tuple[CacheJob, str]] = []
        workers = workers or max(1, min(4, (os.cpu_count() or 2)))
        with ThreadPoolExecutor(workers) as pool:
            hashes = list(pool.map(self._safe_hash, [j.path for j in jobs]))
        for job, digest in zip(jobs, hashes, strict=True):
            if isinstance(digest, Exception):
                result.failed[job.item] = f"cannot read: {digest}"
                continue
            try:
                mask_id = self._mask_id(job, digest)
            except OSError as exc:
                result.failed[job.item] = f"cannot read its mask: {exc}"
                continue
            key = cache_key(digest, job, vae_id, enc_name, _dtype_name(self.store_dtype), mask_id)
            if self.mode == "disk":
                file = entry_path(self.cache_dir, key)
                tensors, problem = load_entry(file, job.latent_shape, job.flip, self.verify, job.mask is not None)
                if tensors is not None:
                    result.latents[job.item] = CachedLatent(key, file=file)
                    result.reused += 1
                    continue
                if problem:
                    log(f"warning: the cached latent of {job.path} is damaged ({problem}); encoding it again")
            if self.import_kohya and job.kohya_npz and job.mask is None:   # sdft makes masked entries itself
                imported = import_kohya_npz(job.path, job.size, job.bucket, job.flip, names=self.kohya_names)
                if imported is not None:
                    result.latents[job.item] = CachedLatent(key, tensors=imported, kohya=True)
                    result.imported += 1
                    continue
            todo.append((job, key))
        if result.reused or result.imported:
            log(f"latent cache: {result.reused} reused, {result.imported} imported from kohya .npz, "
                f"{len(todo)} to encode")
        try:
            if todo:
                self._encode_all(todo, vae, device, dtype, vae_batch_size, vae_id, result, progress, log, workers)
        except BaseException:
            # Also on a stop (progress raising), a crash or a full disk: the hashes are valid
            # either way, and re-hashing a large dataset on the next run costs minutes. The
            # entries written so far stay; the next run reuses them.
            try:
                self.index.save()
            except OSError:
                pass   # the original failure is the one to report
            raise
        self.index.save()
        return result

    def _mask_id(self, job: CacheJob, image_sha256: str) -> str | None:
        from engine.data.masks import mask_identity

        return mask_identity(job.mask, image_sha256, self.index.sha256)

    def _safe_hash(self, path: Path):
        try:
            return self.index.sha256(path)
        except OSError as exc:
            return exc

    def _encode_all(self, todo, vae, device, dtype, vae_batch_size, vae_id, result, progress, log, workers) -> None:
        from engine.data.images import load_pixels

        original = _module_placement(vae)
        _place(vae, device, dtype)
        vae.eval()
        # Bucket-major order so each VAE batch has one shape; flip is part of the group
        # because a batch either encodes the mirrored twins for all its images or for none.
        todo = sorted(todo, key=lambda jk: (jk[0].bucket, jk[0].flip, jk[0].item))
        batches: list[list[tuple[CacheJob, str]]] = []
        for job, key in todo:
            last = batches[-1][0][0] if batches else None
            if (last is not None and (last.bucket, last.flip) == (job.bucket, job.flip)
                    and len(batches[-1]) < vae_batch_size):
                batches[-1].append((job, key))
            else:
                batches.append([(job, key)])
        total = len(todo)
        done = 0

        def decode(job: CacheJob):
            """(pixels, latent-grid mask or None), or the exception that stopped it."""
            from engine.data.masks import load_latent_mask

            try:
                pixels = load_pixels(job.path, job.resized, job.bucket, job.offset,
                                     interpolation=job.interpolation, exif_transpose=job.exif_transpose)
                mask = None if job.mask is None else load_latent_mask(
                    job.mask, job.size, job.resized, job.bucket, job.offset, interpolation=job.interpolation,
                    exif_transpose=job.exif_transpose)
                return pixels, mask
            except Exception as exc:  # unreadable, truncated, wrong size
                return exc

        ahead = max(2, workers * 2)
        writer = ThreadPoolExecutor(1)
        writes: list[Future] = []
        try:
            with ThreadPoolExecutor(workers) as pool:
                pending: deque[list[Future]] = deque()
                queue = iter(batches)

                def submit_next() -> bool:
                    batch = next(queue, None)
                    if batch is None:
                        return False
                    pending.append([pool.submit(decode, job) for job, _ in batch])
                    batch_order.append(batch)
                    return True

                batch_order: deque = deque()
                for _ in range(ahead):
                    if not submit_next():
                        break
                while pending:
                    futures = pending.popleft()
                    batch = batch_order.popleft()
                    submit_next()
                    arrays = [f.result() for f in futures]
                    good = [(jk, a) for jk, a in zip(batch, arrays, strict=True) if not isinstance(a, Exception)]
                    for jk, a in zip(batch, arrays, strict=True):
                        if isinstance(a, Exception):
                            result.failed[jk[0].item] = str(a)
                    if good:
                        self._encode_batch(good, vae, device, dtype, vae_id, result, writer, writes)
                    done += len(batch)
                    _raise_first_failed_write(writes)   # a full disk stops caching now, not at the end
                    if progress:
                        progress(done, total)
            for f in writes:
                f.result()
        finally:
            writer.shutdown(wait=True)
            if original:
                _place(vae, original["device"], original["dtype"])
        if result.failed:
            log(f"latent cache: {len(result.failed)} image(s) skipped: " + "; ".join(
                f"{jobs_path(todo, i)}: {why}" for i, why in list(result.failed.items())[:5]))

    def _encode_batch(self, good, vae, device, dtype, vae_id, result, writer, writes) -> None:
        from engine.data.images import to_tensor

        arrays = [a for _, (a, _mask) in good]
        flip = good[0][0][0].flip
        pixels = to_tensor(arrays)
        if flip:
            pixels = torch.cat([pixels, pixels.flip(-1)], dim=0)
        mean, std = encode_pixels(vae, pixels, device, dtype)
        mean = mean.to("cpu", self.store_dtype)
        std = std.to("cpu", self.store_dtype)
        n = len(good)
        for i, ((job, key), (_a, mask)) in enumerate(good):
            tensors = {"mean": mean[i].contiguous(), "std": std[i].contiguous()}
            if flip:
                tensors["mean_flipped"] = mean[n + i].contiguous()
                tensors["std_flipped"] = std[n + i].contiguous()
            if mask is not None:
                tensors["mask"] = mask   # float32 whatever cache.dtype: it weights the loss as it is
            problem = check_latents(tensors, job.latent_shape, flip, mask is not None)
            if problem:
                result.failed[job.item] = f"bad latent ({problem})"
                continue
            if self.mode == "disk":
                file = entry_path(self.cache_dir, key)
                meta = {
                    "sdft.cache_version": CACHE_VERSION,
                    "sdft.image_sha256": self.index.sha256(job.path),
                    "sdft.bucket": json.dumps(list(job.bucket)),
                    "sdft.resized": json.dumps(list(job.resized)),
                    "sdft.crop": json.dumps(list(job.offset)),
                    "sdft.original_size": json.dumps(list(job.size)),
                    "sdft.vae_id": vae_id,
                    "sdft.encode_dtype": _dtype_name(dtype),
                    "sdft.tensors_sha256": tensors_sha256(tensors),
                }
                if job.mask is not None:
                    meta["sdft.mask"] = str(job.mask.path)
                if job.size_conditioning is not None:
                    meta["sdft.size_conditioning"] = json.dumps(job.size_conditioning)
                writes.append(writer.submit(write_entry, file, tensors, meta))
                result.latents[job.item] = CachedLatent(key, file=file)
            else:
                result.latents[job.item] = CachedLatent(key, tensors=tensors)
            result.encoded += 1


def _raise_first_failed_write(writes: list[Future]) -> None:
    """Drop finished writes from ``writes``; re-raise the first that failed."""
    finished = [f for f in writes if f.done()]
    for f in finished:
        writes.remove(f)
    for f in finished:
        f.result()


def jobs_path(todo, item: int) -> str:
    for job, _ in todo:
        if job.item == item:
            return job.path.name
    return str(item)



def _place(module, device, dtype) -> None:
    """Move only when needed (diffusers warns on every dtype cast)."""
    current = _module_placement(module)
    if not current:
        return
    if torch.device(device) != current["device"]:
        module.to(device=device)
    if dtype != current["dtype"]:
        module.to(dtype=dtype)


def _module_placement(module) -> dict:
    try:
        p = next(module.parameters())
        return {"device": p.device, "dtype": p.dtype}
    except StopIteration:
        return {}



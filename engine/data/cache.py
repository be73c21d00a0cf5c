"""Content-addressed latent cache and kohya ``.npz`` import.

An entry's key hashes everything that changes the latent: the image bytes, bucket, resize,
crop, flip, interpolation, the VAE's weights and the encode dtype. So a second run encodes
only what changed, and an edited image gets a new entry instead of a stale one (kohya #931).
Files are ``<cache_dir>/<key[:2]>/<key>.safetensors`` with ``mean``/``std`` (and flipped
twins); ``index.json`` remembers image hashes by path + size + mtime.

Decoding and resizing run in a thread pool ahead of the VAE, so the encoder never waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from engine import atomic

CACHE_VERSION = "1"
INDEX_NAME = "index.json"
MANIFEST_DIR = "runs"


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

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (4, self.bucket[1] // 8, self.bucket[0] // 8)


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


# ---------------------------------------------------------------- identities


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


def cache_key(image_sha256: str, job: CacheJob, vae_id: str, encode_dtype: str, store_dtype: str = "float32") -> str:
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
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.safetensors"


# ---------------------------------------------------------------- verification


def check_latents(tensors: dict[str, torch.Tensor], shape: tuple[int, int, int], flip: bool) -> str | None:
    """None when the entry is usable: right shape, floating point, finite."""
    names = ["mean", "std"] + (["mean_flipped", "std_flipped"] if flip else [])
    for name in names:
        t = tensors.get(name)
        if t is None:
            return f"missing tensor {name!r}"
        if tuple(t.shape) != shape:
            return f"{name} has shape {tuple(t.shape)}, expected {shape}"
        if not t.is_floating_point():
            return f"{name} is not floating point"
        if not bool(torch.isfinite(t).all()):
            return f"{name} has non-finite values"
    return None


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum of an entry's stored arrays (names, dtypes, shapes and bytes, in name order):
    finite but garbled values (a bad disk, a partial copy) fail it where range checks pass."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_entry(file: Path, shape: tuple[int, int, int], flip: bool, verify: str) -> tuple[dict | None, str | None]:
    """(tensors, None) for a usable entry; (None, why) when it is broken and must be
    re-encoded; (None, None) when there is none. ``verify = "exists"`` trusts the file."""
    if not file.is_file():
        return None, None
    if verify == "exists":
        return {}, None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(file))
        with safe_open(str(file), framework="pt") as fh:
            expected = (fh.metadata() or {}).get("sdft.tensors_sha256")
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is simply encoded again
        return None, f"unreadable ({type(exc).__name__})"
    problem = check_latents(tensors, shape, flip)
    if problem is None and expected is not None and tensors_sha256(tensors) != expected:
        problem = "its checksum does not match its contents"
    return (None, problem) if problem else (tensors, None)


# ---------------------------------------------------------------- kohya npz


def _npz_latent(data, base: str, latent_hw: tuple[int, int]) -> np.ndarray | None:
    h, w = latent_hw
    for name in (base, f"{base}_{h}x{w}"):
        if name in data.files:
            return data[name]
    return None


def kohya_npz_candidates(image: Path, original_size: tuple[int, int]) -> list[Path]:
    """Files kohya may have written for ``image``, in preference order (all eras)."""
    stem = image.with_suffix("")
    w, h = original_size
    return [
        stem.with_name(stem.name + ".npz"),                                   # 2022-12 … 2024-07 (+ preferred at HEAD)
        stem.with_name(f"{stem.name}_{w:04d}x{h:04d}_sd.npz"),                # HEAD, LoRA scripts
        stem.with_name(f"{stem.name}_{w:04d}x{h:04d}_sdxl.npz"),              # HEAD, fine_tune.py
    ]


def _older_than(cache_file: Path, image: Path) -> bool:
    try:
        return cache_file.stat().st_mtime < image.stat().st_mtime
    except OSError:
        return True


def import_kohya_npz(image: Path, original_size: tuple[int, int], bucket: tuple[int, int],
                     flip: bool) -> dict[str, torch.Tensor] | None:
    """Latents from a kohya npz when one exists and fits the bucket; None otherwise.

    The npz holds one posterior draw (unscaled); it becomes ``mean`` with ``std = 0`` ("kohya"
    mode). With flip_aug the flipped entry must exist too.
    """
    shape = (4, bucket[1] // 8, bucket[0] // 8)
    hw = (shape[1], shape[2])
    for file in kohya_npz_candidates(image, original_size):
        if not file.is_file():
            continue
        if _older_than(file, image):
            continue  # the image was edited after kohya cached it: the latent is stale (kohya #931)
        try:
            with np.load(file, allow_pickle=False) as data:
                latents = _npz_latent(data, "latents", hw)
                if latents is None:
                    latents = data["arr_0"] if "arr_0" in data.files else None
                flipped = _npz_latent(data, "latents_flipped", hw)
                if latents is not None and flipped is None and flip:
                    # Dec-2022 era: the mirrored latent sits in <stem>_flip.npz
                    flip_file = file.with_name(file.stem + "_flip.npz")
                    if flip_file.is_file():
                        with np.load(flip_file, allow_pickle=False) as fdata:
                            flipped = fdata["arr_0"] if "arr_0" in fdata.files else None
        except Exception:
            continue
        if latents is None:
            continue
        tensors = {"mean": torch.from_numpy(np.asarray(latents, dtype=np.float32).copy())}
        tensors["std"] = torch.zeros_like(tensors["mean"])
        if flip:
            if flipped is None:
                continue
            tensors["mean_flipped"] = torch.from_numpy(np.asarray(flipped, dtype=np.float32).copy())
            tensors["std_flipped"] = torch.zeros_like(tensors["mean_flipped"])
        if check_latents(tensors, shape, flip) is None:
            return tensors
    return None


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
                 verify: str = "full", import_kohya: bool = True):
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if mode == "disk" and self.cache_dir is None:
            raise ValueError("disk cache needs a cache_dir")
        self.store_dtype = torch.float16 if store_dtype == "float16" else torch.float32
        self.verify = verify
        self.import_kohya = import_kohya
        self.index = ImageHashIndex(self.cache_dir if mode == "disk" else None)

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
        for job, digest in zip(jobs, hashes):
            if isinstance(digest, Exception):
                result.failed[job.item] = f"cannot read: {digest}"
                continue
            key = cache_key(digest, job, vae_id, enc_name, _dtype_name(self.store_dtype))
            if self.mode == "disk":
                file = entry_path(self.cache_dir, key)
                tensors, problem = load_entry(file, job.latent_shape, job.flip, self.verify)
                if tensors is not None:
                    result.latents[job.item] = CachedLatent(key, file=file)
                    result.reused += 1
                    continue
                if problem:
                    log(f"warning: the cached latent of {job.path} is damaged ({problem}); encoding it again")
            if self.import_kohya and job.kohya_npz:
                imported = import_kohya_npz(job.path, job.size, job.bucket, job.flip)
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
            try:
                return load_pixels(job.path, job.resized, job.bucket, job.offset,
                                   interpolation=job.interpolation, exif_transpose=job.exif_transpose)
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
                    good = [(jk, a) for jk, a in zip(batch, arrays) if not isinstance(a, Exception)]
                    for jk, a in zip(batch, arrays):
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

        arrays = [a for _, a in good]
        flip = good[0][0][0].flip
        pixels = to_tensor(arrays)
        if flip:
            pixels = torch.cat([pixels, pixels.flip(-1)], dim=0)
        mean, std = encode_pixels(vae, pixels, device, dtype)
        mean = mean.to("cpu", self.store_dtype)
        std = std.to("cpu", self.store_dtype)
        n = len(good)
        for i, ((job, key), _a) in enumerate(good):
            tensors = {"mean": mean[i].contiguous(), "std": std[i].contiguous()}
            if flip:
                tensors["mean_flipped"] = mean[n + i].contiguous()
                tensors["std_flipped"] = std[n + i].contiguous()
            problem = check_latents(tensors, job.latent_shape, flip)
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
                writes.append(writer.submit(_write_entry, file, tensors, meta))
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


def _write_entry(file: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic.atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


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


# ---------------------------------------------------------------- manifests and pruning


def write_manifest(cache_dir: Path, run_name: str, keys: Iterable[str]) -> Path:
    """Record which entries a run uses, so ``sdft cache prune`` knows what is still needed."""
    file = Path(cache_dir) / MANIFEST_DIR / f"{run_name}.json"
    atomic.write_text(file, json.dumps({"keys": sorted(set(keys))}, indent=0))
    return file


def referenced_keys(cache_dir: Path, only: str | None = None) -> set[str]:
    keys: set[str] = set()
    folder = Path(cache_dir) / MANIFEST_DIR
    if not folder.is_dir():
        return keys
    for file in folder.glob("*.json"):
        if only is not None and file.stem != only:
            continue
        try:
            keys.update(json.loads(file.read_text(encoding="utf-8")).get("keys", []))
        except (OSError, ValueError):
            continue
    return keys


def prune_cache(cache_dir: str | Path, keep: set[str], *, dry_run: bool = False) -> tuple[int, int]:
    """Delete entries whose key is not in ``keep``: (files, bytes) removed."""
    cache_dir = Path(cache_dir)
    files = bytes_ = 0
    for file in cache_dir.glob("??/*.safetensors"):
        if file.stem in keep:
            continue
        size = file.stat().st_size
        if not dry_run:
            file.unlink(missing_ok=True)
        files += 1
        bytes_ += size
    return files, bytes_

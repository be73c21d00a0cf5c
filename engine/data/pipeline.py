"""TrainingData: from a run's dataset tables to bucketed batches.

``from_config`` reads metadata, sizes and buckets (no pixels). ``prepare_latents`` fills the
latent cache. ``epoch_plan(epoch)`` is a pure function of (seed, epoch); ``load_batch``
turns one planned batch into tensors with per-sample randomness seeded by
(seed, epoch, batch position, item index), so worker count and resume change nothing.

Batches never mix cached latents and live pixels: subsets with ``random_crop`` or
``color_aug`` (or ``cache.latents = "none"``) are encoded live by the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from engine.config.dataset import DatasetSpec, check_resolution
from engine.data.buckets import Assignment, BucketSettings, bucket_info, crop_offset
from engine.data.captions import tag_frequency
from engine.data.holdout import hold_out
from engine.data.items import DataItem, dataset_items
from engine.data.parts import part_weight
from engine.data.processing import process_caption, sample_rng, sample_seed
from engine.data.scan import clash_index, name_clashes
from engine.data.size_conditioning import entry_conditioning, item_conditioning


class DataError(Exception):
    """The data cannot be used as configured; the message lists every problem."""


@dataclass(frozen=True)
class BatchRef:
    """One planned batch: plain values only, so it can be logged or stored with a resume state."""

    dataset: int
    bucket: tuple[int, int]
    items: tuple[int, ...]        # DataItem indices (an image repeated appears several times)
    live: bool                    # True: pixels, encoded by the trainer; False: cached latents


@dataclass
class Batch:
    latents: torch.Tensor | None  # (B, 4, h, w) unscaled z
    pixels: torch.Tensor | None   # (B, 3, H, W) in [-1, 1] when not cached
    captions: list[str]
    keys: list[str]
    tokens: Any = None            # the captions' TokenBatch, when the loader tokenized them already
    masks: torch.Tensor | None = None   # (B, 1, h, w) loss weights on the latent grid (masked loss)
    part: tuple[int, int, int] = (0, 0, 0)   # (start, end, count): this process's rows of the global batch
    weight: float = 1.0           # its mean loss's weight in the average over processes (distributed.py)
    # One SizeConditioning per image (engine/families/sdxl/conditioning.py) for a family whose
    # U-Net takes them (SDXL); None for SD1/SD2.
    size_conditioning: list | None = None
    text: Any = None              # the captions' cached text-encoder outputs (engine/train/text_cache.py)


class TrainingData:
    """The run's data: items, buckets, epoch plans and batch loading."""

    def __init__(self, items: list[DataItem], datasets: list[DatasetSpec], settings: list[BucketSettings], *,
                 seed: int, cache_mode: str = "disk", cache_dir: Path | None = None, cache_cfg=None,
                 exif_transpose: bool = True, max_train_steps: int = 1600,
                 run_dir: str | Path = "run", log: Callable[[str], None] = print,
                 size_conditioning: bool = False, kohya_latents: tuple[str, ...] | None = None):
        self.items = items
        self.datasets = datasets
        self.settings = settings
        self.seed = int(seed)
        self.cache_mode = cache_mode
        self.cache_dir = cache_dir
        self.cache_cfg = cache_cfg
        self.exif_transpose = exif_transpose
        self.max_train_steps = max_train_steps   # the run's, once use_schedule() gives it
        self.run_dir = Path(run_dir)   # names this run's manifest in a shared cache
        self.log = log
        self.latent_sampling = getattr(cache_cfg, "latent_sampling", "sample")
        self._latents: dict = {}          # item index -> CachedLatent
        self._excluded: set[int] = set()  # items that failed caching
        self._prepared = cache_mode == "none"
        self.processes = 1                # use_processes: the global batch is the batch size times this
        self.size_conditioning = size_conditioning   # record each image's size and crop numbers (SDXL)
        self.kohya_latents = kohya_latents   # which of kohya's .npz names may hold this family's latents

    # ------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg, *, default_resolution: tuple[int, int] = (512, 512), family=None,
                    log: Callable[[str], None] = print) -> "TrainingData":
        """``family``: the model's adapter (engine.families), which says whether batches carry each
        image's size and crop numbers and which kohya latent files may be imported; None: SD's."""
        blueprint = cfg.datasets
        if blueprint is None or not blueprint.datasets:
            raise DataError("the run has no datasets: add [[datasets]] tables or dataset_config")
        data_cfg = cfg.data
        problems: list[str] = []
        items: list[DataItem] = []
        settings: list[BucketSettings] = []
        for di, spec in enumerate(blueprint.datasets):
            s = BucketSettings.of_dataset(spec, tuple(default_resolution))
            limits = check_resolution(spec, s.resolution)
            if limits:   # no bucket list exists for these limits: report them, assign nothing
                problems.extend(limits)
                continue
            if spec.bucket_no_upscale and not spec.enable_bucket:
                log(f"{spec.key}: bucket_no_upscale needs enable_bucket; ignored")
            if s.no_upscale and (spec.min_bucket_reso, spec.max_bucket_reso) != (256, 1024):
                log(f"{spec.key}: min/max_bucket_reso are ignored with bucket_no_upscale")
            ds_items, s = dataset_items(di, spec, s, data_cfg, problems, log, start=len(items),
                                        max_token_length=cfg.model.max_token_length)
            items.extend(ds_items)
            settings.append(s)
        if problems:
            raise DataError("dataset problems:\n  " + "\n  ".join(problems))
        if not items:
            raise DataError("no usable images in any dataset (see the messages above)")
        for clash in name_clashes(it.path for it in items):
            log(clash.note())
        seed = cfg.train.seed
        if seed is None:
            seed = random.randrange(2**31)
            log(f"no train.seed set: using {seed}")
        hold_out(items, blueprint.datasets, seed, log)
        if all(it.validation for it in items):
            raise DataError("every image is held out for validation: nothing would train "
                            "(lower validation_split, or unmark an is_val subset)")
        cache_dir = None
        if cfg.cache.latents == "disk":
            cache_dir = Path(cfg.cache.cache_dir) if cfg.cache.cache_dir else Path(cfg.train.output_dir) / ".latent-cache"
            if not cache_dir.is_absolute():
                cache_dir = Path(cfg.base_dir) / cache_dir
        data = cls(items, blueprint.datasets, settings, seed=seed, cache_mode=cfg.cache.latents,
                   cache_dir=cache_dir, cache_cfg=cfg.cache, exif_transpose=data_cfg.exif_transpose,
                   run_dir=cfg.run_dir(), log=log, size_conditioning=getattr(family, "size_conditioning", False),
                   kohya_latents=getattr(family, "kohya_latents", None))
        live = sorted({it.subset.key for it in items if not it.subset.cacheable})
        if live and cfg.cache.latents != "none":
            log("random_crop/color_aug change pixels on every draw, so these subsets are encoded live "
                "(not cached): " + ", ".join(live))
        info = data.bucket_info
        if any(ds.enable_bucket for ds in blueprint.datasets):
            log(f"{len(items)} images in {len(info['buckets'])} buckets, mean aspect error "
                f"{info.get('mean_img_ar_error', 0.0):.4f}")
        return data

    def use_schedule(self, total_steps: int) -> None:
        """The run's total optimizer steps, from engine.train.schedule (a fractional
        ``token_warmup_step`` is a ratio of it)."""
        self.max_train_steps = total_steps

    # ------------------------------------------------------------ facts

    @property
    def num_images(self) -> int:
        """Distinct images that train (repeats not counted; images left out while caching not
        counted either): the one count the console, run_started and saved models report."""
        return sum(1 for it in self.items if self._trains(it))

    @property
    def num_items(self) -> int:
        """Images × repeats: the samples of one epoch."""
        return sum(it.repeats for it in self.items if self._trains(it))

    @property
    def num_validation_images(self) -> int:
        """Images held out for the validation loss (never trained)."""
        return sum(1 for it in self.items if it.validation and it.index not in self._excluded)

    def _trains(self, item: DataItem) -> bool:
        return item.index not in self._excluded and not item.validation

    def assignments(self) -> list[Assignment]:
        return [Assignment(it.size, it.bucket, it.resized) for it in self.items]

    @property
    def bucket_info(self) -> dict:
        """Bucket statistics (kohya's bucket_info) over all datasets, repeats counted."""
        active = [it for it in self.items if self._trains(it)]
        return bucket_info([Assignment(it.size, it.bucket, it.resized) for it in active],
                           [it.repeats for it in active],
                           enable_bucket=any(s.enable_bucket for s in self.settings))

    @property
    def fingerprint(self) -> str:
        """sha256 over what decides batches: items, sizes, buckets, captions, options, global batch
        sizes (the same run on another number of processes keeps its fingerprint)."""
        h = hashlib.sha256()
        for d, s in enumerate(self.settings):
            h.update(json.dumps([self.global_batch_size(d), list(s.resolution), s.enable_bucket, s.no_upscale,
                                 s.min_bucket_reso, s.max_bucket_reso, s.bucket_reso_steps]).encode())
        for it in self.items:
            h.update(json.dumps([it.dataset, it.key, list(it.size), list(it.bucket), list(it.resized),
                                 it.caption, it.repeats, it.subset.key]
                                + (["validation"] if it.validation else [])).encode())
        return h.hexdigest()

    @property
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """Per metadata file name: tag → number of images carrying it."""
        by_file: dict[str, list] = {}
        for it in self.items:
            by_file.setdefault(it.metadata_file.name, []).append(it.tags)
        return {name: tag_frequency(tags) for name, tags in by_file.items()}

    def _is_live(self, item: DataItem) -> bool:
        return self.cache_mode == "none" or not item.subset.cacheable

    # ------------------------------------------------------------ latents

    def prepare_latents(self, vae, device, dtype=torch.float32, progress=None, *, vae_id: str | None = None,
                        main: bool = True) -> None:
        """Fill the latent cache for every cacheable item. Bad images are skipped and reported;
        live-encoded images are decoded once here, so one that cannot be is left out now rather
        than failing the run when its batch comes. ``main``: this process registers the run on the
        disk cache and writes its manifest (the other processes of a run only read)."""
        live_failed = self._check_live_images()
        if self.cache_mode == "none":
            self._excluded = set(live_failed)
            self._report_left_out(live_failed)
            self._prepared = True
            return
        from engine.data.cache import register_run, write_manifest

        on_disk = self.cache_mode == "disk" and self.cache_dir is not None
        if on_disk and main:
            register_run(self.cache_dir, self.run_dir)   # before the first write: prune now sees this run
        result = self._latent_cache().prepare(self._cache_jobs(), vae, device, _torch_dtype(dtype),
                                              vae_batch_size=getattr(self.cache_cfg, "vae_batch_size", 1),
                                              vae_id=vae_id, progress=progress, log=self.log)
        self._latents = result.latents
        failed = {**result.failed, **live_failed}
        self._excluded = set(failed)
        self._report_left_out(failed)
        if on_disk and main:
            write_manifest(self.cache_dir, self.run_dir, [c.key for c in result.latents.values() if not c.kohya])
        self._prepared = True
        self.cache_result = result

    def encode_share(self, vae, device, dtype, progress, rank: int, processes: int) -> None:
        """A multi-process run's first caching pass: this process encodes every ``processes``-th
        image into the disk cache (kohya shares caching the same way); prepare_latents then reads
        them all. Images that fail are reported by that second pass."""
        jobs = [job for n, job in enumerate(self._cache_jobs()) if n % processes == rank]
        self._latent_cache().prepare(jobs, vae, device, _torch_dtype(dtype),
                                     vae_batch_size=getattr(self.cache_cfg, "vae_batch_size", 1),
                                     progress=progress, log=lambda _text: None)

    def _latent_cache(self):
        from engine.data.cache import LatentCache

        return LatentCache(self.cache_dir, mode=self.cache_mode, store_dtype=getattr(self.cache_cfg, "dtype", "float32"),
                           verify=getattr(self.cache_cfg, "verify", "full"), kohya_names=self.kohya_latents)

    def _cache_jobs(self) -> list:
        """Every cacheable item as the cache encodes it."""
        from engine.data.cache import CacheJob

        shares_name = clash_index(it.path for it in self.items)
        jobs = []
        for it in self.items:
            if self._is_live(it):
                continue
            interpolation = it.subset.resize_interpolation or _auto_interp(it.size, it.resized)
            numbers = None
            if self.size_conditioning:
                numbers = entry_conditioning(it.size, it.bucket, bucketed=self._bucketed(it), flip=it.subset.flip_aug)
            jobs.append(CacheJob(it.index, it.path, it.size, it.bucket, it.resized,
                                 crop_offset(it.resized, it.bucket), interpolation, it.subset.flip_aug,
                                 self.exif_transpose, kohya_npz=it.path not in shares_name, mask=it.mask,
                                 size_conditioning=numbers))
        return jobs

    def _check_live_images(self) -> dict[int, str]:
        """Item index -> why it cannot be decoded, for the images encoded live during training."""
        from concurrent.futures import ThreadPoolExecutor

        from engine.data.images import open_rgb

        live = [it for it in self.items if self._is_live(it)]
        if not live:
            return {}

        def problem(item: DataItem) -> str | None:
            try:
                open_rgb(item.path, exif_transpose=self.exif_transpose)
            except Exception as exc:  # noqa: BLE001 - unreadable, truncated, unsupported: all left out
                return str(exc) or type(exc).__name__
            return None

        failed: dict[int, str] = {}
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            for item, why in zip(live, pool.map(problem, live), strict=True):
                if why is not None:
                    failed[item.index] = why
        return failed

    def _report_left_out(self, failed: dict[int, str]) -> None:
        """Name every image caching rejected, one line each, then the count that trains."""
        if not failed:
            return
        for index in sorted(failed):
            self.log(f"left out of training: {self.items[index].path}: {failed[index]}")
        self.log(f"{len(failed)} image(s) left out of training (could not be decoded or encoded); "
                 f"{self.num_images} images train")

    # ------------------------------------------------------------ plans

    def _groups(self) -> list[tuple[int, tuple[int, int], bool, list[int]]]:
        """(dataset, bucket, live, member items with repeats) in a fixed order."""
        groups: dict[tuple[int, tuple[int, int], bool], list[int]] = {}
        for it in self.items:
            if not self._trains(it):
                continue
            groups.setdefault((it.dataset, it.bucket, self._is_live(it)), []).extend([it.index] * it.repeats)
        return [(d, b, live, members) for (d, b, live), members in sorted(groups.items())]

    def use_processes(self, processes: int) -> None:
        """Plan at the global batch: each dataset's batch size times the processes of the run, so N
        processes train the batches one process at N times the batch would (engine/train/distributed.py)."""
        self.processes = processes

    def global_batch_size(self, dataset: int) -> int:
        return self.datasets[dataset].batch_size * getattr(self, "processes", 1)

    def batches_per_epoch(self) -> int:
        """Global batches per epoch (every process takes a part of each)."""
        return sum(math.ceil(len(m) / self.global_batch_size(d)) for d, _b, _l, m in self._groups())

    def epoch_plan(self, epoch: int) -> list[BatchRef]:
        """Shuffle each bucket, slice into global batches, shuffle the batch list: a function of
        (seed, epoch) and the global batch size alone, whatever the number of processes."""
        rng = random.Random(sample_seed(self.seed, epoch, -1, -1, salt="plan"))
        plan: list[BatchRef] = []
        for d, bucket, live, members in self._groups():
            members = list(members)
            rng.shuffle(members)
            size = self.global_batch_size(d)
            for i in range(0, len(members), size):
                plan.append(BatchRef(d, bucket, tuple(members[i:i + size]), live))
        rng.shuffle(plan)
        return plan

    # ------------------------------------------------------------ batches

    def load_batch(self, ref: BatchRef, *, epoch: int, global_step: int, position: int,
                   part: tuple[int, int] | None = None) -> Batch:
        """Tensors for the items ``[start, end)`` (``part``; default all) of the global batch ``ref``
        at ``position`` in the epoch's plan. ``epoch`` is 1-based; ``global_step`` the exact optimizer
        step. Each sample's randomness is keyed by (position, its place in the global batch), so a
        process draws for its items what one process would. An empty part loads the first item,
        whose loss then weighs nothing (engine/train/distributed.py)."""
        if not ref.live and not self._prepared:
            raise RuntimeError("prepare_latents() must run before loading cached batches")
        count = len(ref.items)
        start, end = part if part is not None else (0, count)
        places = range(start, end) if end > start else range(0, 1)
        samples, captions, flips = [], [], []
        for j in places:
            item = self.items[ref.items[j]]
            rng = sample_rng(self.seed, epoch, position, j)
            flipped = item.subset.flip_aug and rng.random() < 0.5
            offset = crop_offset(item.resized, item.bucket, random_crop=item.subset.random_crop, rng=rng)
            samples.append(self._sample(item, ref.live, flipped, offset, rng,
                                        sample_seed(self.seed, epoch, position, j, salt="latent")))
            captions.append(process_caption(item.caption, item.subset, rng, epoch=epoch, step=global_step,
                                            max_train_steps=self.max_train_steps))
            flips.append(flipped)
        shown = BatchRef(ref.dataset, ref.bucket, tuple(ref.items[j] for j in places), ref.live)
        batch = self._batch(shown, samples, captions, flips)
        batch.part = (places.start, places.stop, count)
        batch.weight = 1.0 if part is None else part_weight(end - start, count, self.processes)
        return batch

    def validation_plan(self) -> list[BatchRef]:
        """The held-out images once each, in fixed batches: (dataset, bucket) order, the dataset's
        batch size (engine/train/validation.py evaluates them)."""
        groups: dict[tuple[int, tuple[int, int], bool], list[int]] = {}
        for it in self.items:
            if it.validation and it.index not in self._excluded:
                groups.setdefault((it.dataset, it.bucket, self._is_live(it)), []).append(it.index)
        plan = []
        for (d, bucket, live), members in sorted(groups.items()):
            size = self.datasets[d].batch_size
            plan += [BatchRef(d, bucket, tuple(members[i:i + size]), live) for i in range(0, len(members), size)]
        return plan

    def load_validation_batch(self, ref: BatchRef, seed: int) -> Batch:
        """A validation batch, the same at every step: no flip, the centre crop, no colour change,
        no caption dropout or warm-up; the latent draw and caption shuffle seeded by (seed, image)."""
        if not ref.live and not self._prepared:
            raise RuntimeError("prepare_latents() must run before loading cached batches")
        samples, captions = [], []
        for idx in ref.items:
            item = self.items[idx]
            rng = random.Random(sample_seed(seed, 0, -2, item.index, salt="validation"))
            samples.append(self._sample(item, ref.live, False, crop_offset(item.resized, item.bucket), None,
                                        sample_seed(seed, 0, -2, item.index, salt="validation-latent")))
            steady = dataclasses.replace(item.subset, caption_dropout_rate=0.0, caption_tag_dropout_rate=0.0,
                                         caption_dropout_every_n_epochs=0, token_warmup_step=0)
            captions.append(process_caption(item.caption, steady, rng, epoch=1, step=self.max_train_steps,
                                            max_train_steps=self.max_train_steps))
        return self._batch(ref, samples, captions, [False] * len(samples))

    def _sample(self, item: DataItem, live: bool, flipped: bool, offset, rng, latent_seed: int):
        """(latent or pixels, latent-grid mask or None) of one item."""
        if live:
            pixels = self._live_pixels(item, rng, flipped, offset)
            mask = None if item.mask is None else self._mask(item, offset)
        else:
            tensors = self._entry(item).load()
            pixels = self._latent(item, flipped, latent_seed, tensors)
            mask = tensors.get("mask") if item.mask is not None else None
        if mask is not None and flipped:
            mask = mask.flip(-1)
        return pixels, mask

    def _batch(self, ref: BatchRef, samples: list, captions: list[str], flips: list[bool]) -> Batch:
        """The batch of loaded samples; masks only when one of its images has one (the others
        get ones, as in kohya), so a run without masks computes exactly what it did before; each
        image's size and crop numbers when the family takes them (``flips``: which were mirrored)."""
        items = [self.items[i] for i in ref.items]
        keys = [it.key for it in items]
        masks = None
        if any(mask is not None for _x, mask in samples):
            shape = (1, ref.bucket[1] // 8, ref.bucket[0] // 8)
            masks = torch.stack([m if m is not None else torch.ones(shape) for _x, m in samples])
        conditioning = None
        if self.size_conditioning:
            conditioning = [item_conditioning(it.size, it.bucket, bucketed=self._bucketed(it), flipped=flipped)
                            for it, flipped in zip(items, flips, strict=True)]
        if ref.live:
            from engine.data.images import to_tensor

            return Batch(None, to_tensor([x for x, _m in samples]), captions, keys, masks=masks,
                         size_conditioning=conditioning)
        return Batch(torch.stack([x for x, _m in samples]), None, captions, keys, masks=masks,
                     size_conditioning=conditioning)

    def _bucketed(self, item: DataItem) -> bool:
        return self.settings[item.dataset].enable_bucket

    def _live_pixels(self, item: DataItem, rng: random.Random | None, flipped: bool, offset):
        from engine.data.images import color_augment, load_pixels

        sub = item.subset
        interpolation = sub.resize_interpolation or _auto_interp(item.size, item.resized)
        arr = load_pixels(item.path, item.resized, item.bucket, offset, interpolation=interpolation,
                          flipped=flipped, exif_transpose=self.exif_transpose)
        if sub.color_aug and rng is not None:
            arr = color_augment(arr, rng)
        return arr

    def _mask(self, item: DataItem, offset) -> torch.Tensor:
        from engine.data.masks import load_latent_mask

        interpolation = item.subset.resize_interpolation or _auto_interp(item.size, item.resized)
        return load_latent_mask(item.mask, item.size, item.resized, item.bucket, offset,
                                interpolation=interpolation, exif_transpose=self.exif_transpose)

    def _entry(self, item: DataItem):
        entry = self._latents.get(item.index)
        if entry is None:
            raise RuntimeError(f"{item.path}: no cached latent (prepare_latents() skipped it)")
        return entry

    def _latent(self, item: DataItem, flipped: bool, noise_seed: int, tensors: dict | None = None) -> torch.Tensor:
        entry = self._entry(item)
        tensors = tensors if tensors is not None else entry.load()
        suffix = "_flipped" if flipped else ""
        mean = tensors["mean" + suffix].float()
        std = tensors["std" + suffix].float()
        mode = "kohya" if entry.kohya else self.latent_sampling
        if mode == "mean":
            return mean
        if mode == "kohya":
            noise_seed = int(entry.key[:15], 16) + (1 if flipped else 0)
        gen = torch.Generator().manual_seed(noise_seed)
        return mean + std * torch.randn(mean.shape, generator=gen)


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return dtype


def _auto_interp(size, resized) -> str:
    from engine.data.images import auto_interpolation

    return auto_interpolation(size, resized)

"""Aspect-ratio bucketing, exactly as kohya computes it. Pure math, no torch.

Functions take plain sizes and return plain tuples so the wizard, the CLI histogram and the
training pipeline share one implementation. ``assign_sizes`` handles 100,000 images well
under a second (numpy, vectorised over images; the result equals the scalar rule). The rules in
words, with an example: docs/formats.md, "Aspect-ratio buckets".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from engine.config.dataset import round_bucket_limits

Size = tuple[int, int]


class BucketError(ValueError):
    """An image that cannot be bucketed (e.g. a side shorter than the bucket step)."""


# ---------------------------------------------------------------- the bucket list


def make_bucket_list(resolution: Size, min_b: int, max_b: int, d: int) -> list[Size]:
    """kohya's predefined buckets for ``resolution`` (W, H); limits already rounded
    to the step (engine.config.dataset.round_bucket_limits)."""
    W, H = resolution
    if max_b < W or max_b < H or max_b < min_b:
        raise BucketError(f"max_bucket_reso {max_b} must be ≥ the resolution {W}x{H} and ≥ min_bucket_reso {min_b}")
    area = W * H
    s = int(math.floor(math.sqrt(area) / d)) * d
    buckets = {(s, s)}
    w = min_b
    while w <= max_b:
        h = min(max_b, ((area // w) // d) * d)
        if h >= min_b:
            buckets.add((w, h))
            buckets.add((h, w))
        w += d
    return sorted(buckets)


# ---------------------------------------------------------------- choosing a bucket


def cover_resize(size: Size, bucket: Size) -> Size:
    """Scale so the image covers ``bucket`` (one side equal, the other ≥), rounded half up."""
    w, h = size
    bw, bh = bucket
    ar = w / h
    scale = bh / h if ar > bw / bh else bw / w
    return (int(math.floor(w * scale + 0.5)), int(math.floor(h * scale + 0.5)))


def _rts(x: float, d: int) -> int:
    r = int(math.floor(x + 0.5))
    return r - r % d


def select_no_upscale(size: Size, area: int, d: int) -> tuple[Size, Size]:
    """(bucket, resized) with ``bucket_no_upscale``: shrink to the area if larger, never enlarge."""
    w, h = size
    ar = w / h
    if w * h > area:
        rw = math.sqrt(area * ar)
        rh = area / rw
        bw1 = _rts(rw, d)
        bh1 = _rts(bw1 / ar, d)
        bh2 = _rts(rh, d)
        bw2 = _rts(bh2 * ar, d)
        if bh1 == 0 or bh2 == 0 or bw1 == 0 or bw2 == 0:
            raise BucketError(f"image {w}x{h} is too elongated for {d}-pixel bucket steps at this resolution")
        if abs(bw1 / bh1 - ar) < abs(bw2 / bh2 - ar):
            resized = (bw1, int(math.floor(bw1 / ar + 0.5)))
        else:
            resized = (int(math.floor(bh2 * ar + 0.5)), bh2)
    else:
        resized = (w, h)
    bucket = (resized[0] - resized[0] % d, resized[1] - resized[1] % d)
    if bucket[0] == 0 or bucket[1] == 0:
        raise BucketError(f"image {w}x{h} has a side shorter than the bucket step {d} after resizing "
                          f"to {resized[0]}x{resized[1]}")
    return bucket, resized


# ---------------------------------------------------------------- a whole set of images


@dataclass(frozen=True)
class BucketSettings:
    """The effective bucketing parameters of one dataset (limits already rounded)."""

    resolution: Size = (512, 512)
    enable_bucket: bool = True
    no_upscale: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64

    @classmethod
    def of_dataset(cls, spec, default_resolution: Size = (512, 512)) -> "BucketSettings":
        """The settings of one ``[[datasets]]`` table (an engine.config.dataset.DatasetSpec) once
        the resolution is known: the bucket limits rounded to the step, min down and max up."""
        resolution = spec.resolution or tuple(default_resolution)
        d = spec.bucket_reso_steps
        min_b, max_b = round_bucket_limits(spec.min_bucket_reso, spec.max_bucket_reso, d)
        return cls(resolution=(int(resolution[0]), int(resolution[1])), enable_bucket=spec.enable_bucket,
                   no_upscale=spec.bucket_no_upscale and spec.enable_bucket, min_bucket_reso=min_b,
                   max_bucket_reso=max_b, bucket_reso_steps=d)

    @property
    def area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    def bucket_list(self) -> list[Size]:
        """The predefined list (empty with no_upscale, where buckets come from the images)."""
        if not self.enable_bucket:
            return [tuple(self.resolution)]
        if self.no_upscale:
            return []
        return make_bucket_list(self.resolution, self.min_bucket_reso, self.max_bucket_reso, self.bucket_reso_steps)


@dataclass(frozen=True)
class Assignment:
    """Where one image goes: bucket, resize target (None when rejected) and why not."""

    size: Size
    bucket: Size | None
    resized: Size | None
    error: str | None = None

    @property
    def ar_error(self) -> float:
        return self.bucket[0] / self.bucket[1] - self.size[0] / self.size[1] if self.bucket else 0.0

    @property
    def upscale(self) -> float:
        """Linear scale factor (> 1 = enlarged)."""
        return self.resized[0] / self.size[0] if self.resized else 0.0

    @property
    def crop(self) -> Size:
        """Pixels cut from (x, y) in total (the centre crop takes half of each)."""
        if not self.resized:
            return (0, 0)
        return (self.resized[0] - self.bucket[0], self.resized[1] - self.bucket[1])


def assign_sizes(sizes: Sequence[Size], settings: BucketSettings,
                 pinned: Sequence[Size | None] | None = None) -> list[Assignment]:
    """Assign every image. ``pinned`` = per-image train_resolution (or None)."""
    sizes = [(int(w), int(h)) for w, h in sizes]
    out: list[Assignment | None] = [None] * len(sizes)
    rest = []
    for i, size in enumerate(sizes):
        if size[0] <= 0 or size[1] <= 0:
            out[i] = Assignment(size, None, None, f"invalid size {size}")
        elif pinned is not None and pinned[i] is not None:
            bucket = tuple(pinned[i])
            out[i] = Assignment(size, bucket, cover_resize(size, bucket))
        else:
            rest.append(i)
    if settings.enable_bucket and settings.no_upscale:
        d = settings.bucket_reso_steps
        for i in rest:
            try:
                bucket, resized = select_no_upscale(sizes[i], settings.area, d)
                out[i] = Assignment(sizes[i], bucket, resized)
            except BucketError as exc:
                out[i] = Assignment(sizes[i], None, None, str(exc))
        return out  # type: ignore[return-value]
    buckets = settings.bucket_list()
    for i, assignment in zip(rest, nearest_buckets([sizes[i] for i in rest], buckets), strict=True):
        out[i] = assignment
    return out  # type: ignore[return-value]


def nearest_buckets(sizes: list[Size], buckets: list[Size]) -> list[Assignment]:
    """kohya's default rule, vectorised: an image whose size is a bucket keeps it; any other goes
    to the bucket of nearest aspect ratio (the first on ties) and is resized to cover it.
    float64 arithmetic equals Python's, and argmin keeps the first tie, so the choice is kohya's
    image for image (tests/test_data_buckets.py checks it against the rule written plainly)."""
    out: list[Assignment] = []
    if not sizes:
        return out
    arr = np.asarray(sizes, dtype=np.int64)
    ar = arr[:, 0].astype(np.float64) / arr[:, 1].astype(np.float64)
    barr = np.asarray(buckets, dtype=np.int64)
    bar = barr[:, 0].astype(np.float64) / barr[:, 1].astype(np.float64)
    exact = set(map(tuple, buckets))
    chunk = 65536
    for start in range(0, len(sizes), chunk):
        best = np.argmin(np.abs(bar[None, :] - ar[start:start + chunk, None]), axis=1)
        for size, b in zip(sizes[start:start + chunk], best.tolist(), strict=True):
            size = tuple(size)
            if size in exact:
                out.append(Assignment(size, size, size))
            else:
                bucket = tuple(buckets[b])
                out.append(Assignment(size, bucket, cover_resize(size, bucket)))
    return out


# ---------------------------------------------------------------- the crop


def crop_offset(resized: Size, bucket: Size, *, random_crop: bool = False, rng: random.Random | None = None) -> Size:
    """(x, y) of the crop: centre ``e // 2`` or uniform in [0, e] per axis with random_crop."""
    ex = resized[0] - bucket[0]
    ey = resized[1] - bucket[1]
    if random_crop:
        rng = rng or random.Random()
        return (rng.randint(0, ex) if ex > 0 else 0, rng.randint(0, ey) if ey > 0 else 0)
    return (ex // 2 if ex > 0 else 0, ey // 2 if ey > 0 else 0)


# ---------------------------------------------------------------- batching


def batches_for(count: int, batch_size: int) -> int:
    return -(-count // batch_size) if count > 0 else 0


def steps_per_epoch(num_batches: int, grad_accum: int = 1, processes: int = 1) -> int:
    return math.ceil(math.ceil(num_batches / grad_accum) / processes)


# ---------------------------------------------------------------- statistics + report


def mean_ar_error(assignments: Iterable[Assignment]) -> float:
    errors = [abs(a.ar_error) for a in assignments if a.bucket]
    return sum(errors) / len(errors) if errors else 0.0


def bucket_info(assignments: Sequence[Assignment], repeats: Sequence[int] | None = None,
                *, enable_bucket: bool = True) -> dict:
    """``{"buckets": {i: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": x}``."""
    counts: dict[Size, int] = {}
    for i, a in enumerate(assignments):
        if a.bucket:
            counts[a.bucket] = counts.get(a.bucket, 0) + (repeats[i] if repeats else 1)
    info: dict = {"buckets": {i: {"resolution": list(b), "count": counts[b]} for i, b in enumerate(sorted(counts))}}
    if enable_bucket:
        info["mean_img_ar_error"] = mean_ar_error(assignments)
    return info


@dataclass
class BucketRow:
    bucket: Size
    images: int                    # distinct images
    items: int                     # with repeats
    batches: int                   # per epoch
    partial: int                   # size of the last (partial) batch, 0 = all full
    upscaled: list[int] = field(default_factory=list)   # indices of enlarged images
    mean_ar_error: float = 0.0
    members: list[int] = field(default_factory=list)


@dataclass
class BucketReport:
    rows: list[BucketRow]
    rejected: list[tuple[int, str]]
    mean_ar_error: float
    batch_size: int

    @property
    def total_batches(self) -> int:
        return sum(r.batches for r in self.rows)

    @property
    def partial_batches(self) -> int:
        return sum(1 for r in self.rows if r.partial)

    def to_dict(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "mean_img_ar_error": self.mean_ar_error,
            "total_batches": self.total_batches,
            "buckets": [
                {"resolution": list(r.bucket), "images": r.images, "count": r.items, "batches": r.batches,
                 "partial_batch_size": r.partial, "upscaled": len(r.upscaled), "mean_ar_error": r.mean_ar_error}
                for r in self.rows
            ],
            "rejected": [{"index": i, "reason": why} for i, why in self.rejected],
        }


def bucket_report(assignments: Sequence[Assignment], batch_size: int = 1,
                  repeats: Sequence[int] | None = None) -> BucketReport:
    """Per bucket: images, items with repeats, batches per epoch, partial batch, upscaled images.

    ``batch_size`` may be the effective one (batch × accumulation × GPUs) to show which
    buckets end in a partial step.
    """
    groups: dict[Size, list[int]] = {}
    rejected = []
    for i, a in enumerate(assignments):
        if a.bucket is None:
            rejected.append((i, a.error or "rejected"))
        else:
            groups.setdefault(a.bucket, []).append(i)
    rows = []
    for bucket in sorted(groups):
        members = groups[bucket]
        items = sum(repeats[i] if repeats else 1 for i in members)
        rows.append(BucketRow(
            bucket=bucket,
            images=len(members),
            items=items,
            batches=batches_for(items, batch_size),
            partial=items % batch_size,
            upscaled=[i for i in members if assignments[i].resized[0] > assignments[i].size[0]
                      or assignments[i].resized[1] > assignments[i].size[1]],
            mean_ar_error=sum(abs(assignments[i].ar_error) for i in members) / len(members),
            members=members,
        ))
    return BucketReport(rows, rejected, mean_ar_error(assignments), batch_size)


# ---------------------------------------------------------------- one bucket for everything


@dataclass(frozen=True)
class SingleBucket:
    """Every image landed in one bucket only because the minimum bucket side allows no other shape."""

    bucket: Size
    min_bucket_reso: int
    lower_min: int            # the largest minimum side (a multiple of the step) that gives more
    buckets_then: int         # how many buckets the images fill with ``lower_min``

    @property
    def message(self) -> str:
        return (f"every image is in one bucket ({self.bucket[0]}x{self.bucket[1]}): a minimum bucket side of "
                f"{self.min_bucket_reso} leaves no other shape at this resolution, so other aspect ratios are "
                f"cropped; a minimum of {self.lower_min} gives {self.buckets_then} buckets")


def single_bucket_from_min_side(sizes: Sequence[Size], settings: BucketSettings) -> SingleBucket | None:
    """A SingleBucket when bucketing puts all ``sizes`` in one bucket and a smaller
    ``min_bucket_reso`` would not (the images do have other shapes); None otherwise."""
    from dataclasses import replace

    if not sizes or not settings.enable_bucket or settings.no_upscale:
        return None

    def used(s: BucketSettings) -> set[Size]:
        return {a.bucket for a in assign_sizes(sizes, s) if a.bucket is not None}

    buckets = used(settings)
    if len(buckets) != 1:
        return None
    d = settings.bucket_reso_steps
    for lower in range(settings.min_bucket_reso - d, d - 1, -d):
        then = used(replace(settings, min_bucket_reso=lower))
        if len(then) > 1:
            return SingleBucket(next(iter(buckets)), settings.min_bucket_reso, lower, len(then))
    return None

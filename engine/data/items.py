"""A dataset's items: its subsets' metadata read, image sizes filled in, buckets assigned,
each image's loss mask found (masked loss), as ``TrainingData.from_config`` needs them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.config.dataset import DatasetSpec, SubsetSpec
from engine.data.buckets import BucketSettings, assign_sizes
from engine.data.captions import caption_char_limit, caption_from_file_name, join_caption_and_tags, join_separator
from engine.data.metadata import MetadataError
from engine.data.regularization import balance_regularization
from engine.data.scan import read_sizes
from engine.data.subset_source import read_subset


@dataclass
class DataItem:
    """One image of one subset, with its bucket."""

    index: int
    key: str
    path: Path
    caption: str                  # caption joined with tags, before per-sample processing
    tags: str | None
    size: tuple[int, int]
    bucket: tuple[int, int]
    resized: tuple[int, int]
    dataset: int
    subset: SubsetSpec
    metadata_file: Path           # its subset's source: the metadata file, or a folder subset's folder
    mask: Any = None              # engine.data.masks.MaskSource: its loss mask (masked loss), or None
    validation: bool = False      # held out for the validation loss: never trains
    reg_repeats: int | None = None   # a regularization image's repeats (engine/data/regularization.py)

    @property
    def repeats(self) -> int:
        return self.subset.num_repeats if self.reg_repeats is None else self.reg_repeats


def dataset_items(di: int, spec: DatasetSpec, s: BucketSettings, data_cfg, problems: list[str],
                   log: Callable[[str], None], start: int,
                   max_token_length: int = 225) -> tuple[list[DataItem], BucketSettings]:
    """Read every subset's metadata, fill sizes, assign buckets (pinned train_resolution if chosen);
    captions are cut at the characters ``max_token_length`` tokens can take (named in ``log``)."""
    entries = []   # (subset, its source, MetaEntry)
    for sub in spec.subsets:
        key = f"{sub.key}.{'image_dir' if sub.is_folder else 'metadata_file'}"
        try:
            meta = read_subset(sub, caption_extension=data_cfg.caption_extension, recursive=data_cfg.recursive)
        except MetadataError as exc:
            problems.append(f"{key}: {exc}")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{key}: cannot read {sub.source}: {exc}")
            continue
        for w in meta.warnings:
            log(f"{sub.source.name}: {w}")
        if not meta.entries:
            what = "image folder" if sub.is_folder else "metadata file"
            log(f"{sub.key}: {what} {sub.source} is empty: subset skipped")
            continue
        entries.extend((sub, sub.source, e) for e in meta.entries)
    missing = [e.path for _, _, e in entries if e.image_size is None]
    infos = {info.path: info for info in read_sizes(missing, exif_transpose=data_cfg.exif_transpose)}
    kept = []
    for sub, mfile, e in entries:
        size = e.image_size
        if size is None:
            info = infos[e.path]
            if info.size is None:
                log(f"skipped {e.path}: {info.error}")
                continue
            size = info.size
        kept.append((sub, mfile, e, size))
    use_pinned = data_cfg.use_train_resolution
    have = [e.train_resolution is not None for _, _, e, _ in kept]
    if use_pinned == "auto":
        use_pinned = bool(kept) and all(have)
    pinned = None
    if use_pinned and any(have):
        if spec.bucket_no_upscale:
            problems.append(f"{spec.key}: bucket_no_upscale cannot be combined with pinned train_resolution buckets "
                            "(set [data] use_train_resolution = false, or remove bucket_no_upscale)")
            return [], s
        bad = [e.key for _, _, e, _ in kept if e.train_resolution and (e.train_resolution[0] % 8 or e.train_resolution[1] % 8)]
        if bad:
            problems.append(f"{spec.key}: train_resolution must be multiples of 8: " + ", ".join(bad[:10]))
            return [], s
        pinned = [e.train_resolution for _, _, e, _ in kept]
        s = BucketSettings(s.resolution, True, False, s.min_bucket_reso, s.max_bucket_reso, s.bucket_reso_steps)
        log(f"{spec.key}: using the metadata's train_resolution buckets")
    assignments = assign_sizes([size for *_, size in kept], s, pinned)
    items, cut = [], []
    limit = caption_char_limit(max_token_length)
    sep_mode = data_cfg.caption_tags_join
    for (sub, mfile, e, size), a in zip(kept, assignments, strict=True):
        if a.bucket is None:
            log(f"skipped {e.path}: {a.error}")
            continue
        sep = join_separator(sep_mode, sub.caption_separator)
        caption = join_caption_and_tags(e.caption, e.tags, sep=sep, wildcard=sub.enable_wildcard)
        if not caption and sub.caption_from_filename:
            caption = caption_from_file_name(e.path)
        if len(caption) > limit:
            cut.append(e.path.name)
            caption = caption[:limit]
        items.append(DataItem(start + len(items), e.key, e.path, caption, e.tags, size, a.bucket, a.resized,
                              di, sub, mfile))
    if cut:
        shown = ", ".join(cut[:5]) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
        log(f"{spec.key}: {len(cut)} caption(s) over {limit:,} characters are cut there before tokenizing "
            f"(training reads at most {max_token_length} tokens): {shown}")
    items = balance_regularization(items, spec, log)
    for position, item in enumerate(items):   # left-out regularization images leave no gap
        item.index = start + position
    attach_masks(items, problems, log)
    return items, s


def attach_masks(items: list[DataItem], problems: list[str], log: Callable[[str], None]) -> None:
    """Each item's mask source; a subset's mask folder must hold every image's mask (kohya
    refuses a run otherwise), and masks no image uses are named."""
    from engine.data.masks import MaskError, mask_source

    missing: dict[str, list[str]] = {}
    used: dict[Path, set[str]] = {}
    for item in items:
        try:
            item.mask = mask_source(item.path, item.subset)
        except MaskError:
            missing.setdefault(item.subset.key, []).append(item.path.name)
            continue
        if item.mask is not None and item.mask.kind == "file":
            used.setdefault(Path(item.subset.conditioning_data_dir), set()).add(item.mask.path.name)
    for key, names in missing.items():
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        problems.append(f"{key}.conditioning_data_dir: no mask for {len(names)} image(s): {shown} "
                        "(each image needs a mask image with its name in the mask folder)")
    for folder, names in used.items():
        from engine.data.scan import find_images

        extra = sorted(p.name for p in find_images(folder) if p.name not in names)
        if extra:
            log(f"{folder}: {len(extra)} mask(s) match no image and are not used: {', '.join(extra[:5])}")

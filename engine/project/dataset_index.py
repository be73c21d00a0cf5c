"""The images of one dataset, read once: from a folder, a kohya metadata JSON/JSONL, or the
first subset of a dataset or run TOML.

The index is what the wizard shows and edits; when the run is saved, a folder dataset's metadata
JSON is written from these records (no second scan, no second read of the sidecars), with the
keys and sizes ``sdft prepare`` would write (docs/formats.md, metadata).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from engine.project.records import ImageRecord

if TYPE_CHECKING:
    from engine.config.dataset_specs import SubsetSpec
    from engine.data.buckets import Assignment, BucketReport, BucketSettings

Progress = Callable[[int, int], None]


@dataclass
class DatasetIndex:
    """The records of one dataset and where they came from."""

    source: Path | None = None            # what the user chose: folder, metadata file or TOML
    image_dir: Path | None = None
    metadata_file: Path | None = None     # the metadata the records came from (None: a folder)
    records: list[ImageRecord] = field(default_factory=list)
    # folder subsets (kohya's DreamBooth method) the records came from, as their subset tables: the
    # run file trains them as they are, so no metadata file is written for them
    folder_subsets: list[dict[str, Any]] = field(default_factory=list)

    # ---------------------------------------------------------------- building

    @classmethod
    def from_folder(cls, folder: Path, *, caption_extension: str, tags_extension: str,
                    recursive: bool = False, progress: Progress | None = None) -> "DatasetIndex":
        from engine.data.scan import scan_folder

        items = scan_folder(folder, recursive=recursive, caption_extension=caption_extension,
                            tags_extension=tags_extension, progress=progress)
        records = [ImageRecord(path=i.info.path, size=i.info.size, error=i.info.error,
                               orientation=i.info.orientation, mode=i.info.mode, caption=i.caption, tags=i.tags)
                   for i in items]
        return cls(source=folder, image_dir=folder, records=records)

    @classmethod
    def from_folder_subsets(cls, subsets: Sequence[SubsetSpec], tables: Sequence[dict[str, Any]], *, caption_extension: str,
                            recursive: bool = False, source: Path | None = None,
                            progress: Progress | None = None) -> "DatasetIndex":
        """Records of folder subsets (engine.config.dataset's SubsetSpec, with the tables that
        describe them): every image with its caption file's text, as training finds it."""
        from engine.data.scan import find_images, read_sizes
        from engine.data.subset_source import caption_file

        records: list[ImageRecord] = []
        for sub in subsets:
            images = find_images(sub.source, recursive=recursive)   # a folder subset's source: its image_dir
            extension = sub.caption_extension or caption_extension
            for info in read_sizes(images):
                records.append(ImageRecord(path=info.path, size=info.size, error=info.error,
                                           orientation=info.orientation, mode=info.mode,
                                           caption=caption_file(info.path, extension, within=sub.image_dir),
                                           caption_extension=extension, class_tokens=sub.class_tokens))
            if progress:
                progress(len(records), len(records))
        first = subsets[0].image_dir if subsets else None
        return cls(source=source or first, image_dir=first, records=records, folder_subsets=list(tables))

    @classmethod
    def from_metadata(cls, path: Path, image_dir: Path | None = None, *, source: Path | None = None,
                      progress: Progress | None = None) -> "DatasetIndex":
        """Records from a metadata file; sizes it lacks are read from the image headers."""
        from engine.data.metadata import read_metadata
        from engine.data.scan import read_sizes

        image_dir = image_dir or path.parent
        meta = read_metadata(path, image_dir)
        need = [e.path for e in meta.entries if e.image_size is None]
        infos = {i.path: i for i in read_sizes(need)} if need else {}
        records = []
        for n, e in enumerate(meta.entries):
            info = infos.get(e.path)
            size = e.image_size or (info.size if info else None)
            records.append(ImageRecord(path=e.path, size=size, caption=e.caption, tags=e.tags, key=e.key,
                                       error=info.error if info else None))
            if progress and n % 64 == 0:
                progress(n, len(meta.entries))
        if progress:
            progress(len(records), len(records))
        return cls(source=source or path, image_dir=image_dir, metadata_file=path, records=records)

    # ---------------------------------------------------------------- reading

    def usable(self) -> list[ImageRecord]:
        return [r for r in self.records if r.usable]

    def no_images_reason(self, *, recursive: bool) -> str | None:
        """Why the later steps have nothing to work on: no images in the source, or none that can
        be read. None when there are images to train on."""
        if self.usable():
            return None
        from engine.data.scan import image_extensions

        kinds = " ".join(sorted(image_extensions()))
        if not self.records:
            return (f"No images in {self.source}: sdft reads {kinds} files"
                    f"{'' if recursive else ' (sub-folders only with data.recursive)'}. "
                    "Add images or pick another folder.")
        return f"None of the {len(self.records)} images in {self.source} can be read: see the list below."

    def bucket_report(self, settings: BucketSettings, batch_size: int,
                      num_repeats: int) -> tuple[BucketReport, list[Assignment], list[ImageRecord]]:
        """(report, assignments, records) of the engine's bucketing for the usable images."""
        from engine.data.buckets import assign_sizes, bucket_report

        if min(settings.resolution) < settings.bucket_reso_steps:
            raise ValueError(f"resolution {settings.resolution[0]}x{settings.resolution[1]} is below the bucket "
                             f"step {settings.bucket_reso_steps}")
        records = self.usable()
        assignments = assign_sizes([r.size for r in records if r.size is not None], settings)   # usable: all sized
        report = bucket_report(assignments, batch_size, [num_repeats] * len(records))
        return report, assignments, records

    # ---------------------------------------------------------------- writing

    def to_metadata(self) -> dict[str, dict[str, Any]]:
        """The kohya metadata of a folder dataset, from memory: what ``sdft prepare`` writes for
        the same folder (relative keys, the extension kept where two images share a name, the
        size training sees; unreadable images left out)."""
        from engine.data.metadata import make_key
        from engine.data.scan import clash_index

        if self.image_dir is None:
            raise ValueError("the dataset has no image folder to key its metadata against")
        clashing = clash_index(r.path for r in self.records)
        out: dict[str, dict[str, Any]] = {}
        for r in self.records:
            if r.size is None:
                continue
            entry: dict[str, Any] = {}
            if r.caption is not None:
                entry["caption"] = r.caption
            if r.tags is not None:
                entry["tags"] = r.tags
            entry["image_size"] = [r.size[0], r.size[1]]
            out[make_key(r.path, self.image_dir, "relative", shares_name=r.path in clashing)] = entry
        return out

    def write_metadata(self, target: Path) -> Path:
        """Write :meth:`to_metadata` atomically to ``target``."""
        from engine.data.metadata import write_metadata_json

        return write_metadata_json(target, self.to_metadata())

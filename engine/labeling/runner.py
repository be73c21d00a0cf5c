"""The labelling loop shared by BLIP and the taggers, and the programmatic API.

Images whose labels exist (policy ``skip``) are left out before the model loads. The rest
are decoded and preprocessed on a prefetch thread while the model runs the current batch
on the device; each result is written at once (atomic sidecar writes), so a stopped or
crashed run keeps what it finished. An unreadable image is reported and skipped.

This module runs on whatever thread calls it (the CLI's main thread, or a wizard worker):
``progress`` is called on that thread after every batch, ``should_stop`` before every batch.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterable

from engine.data.captions import SidecarEncodingError
from engine.labeling.images import describe_error, read_batches
from engine.labeling.options import (
    TAGGERS,
    CaptionOptions,
    LabelError,
    LabelProgress,
    LabelSummary,
    TagOptions,
)
from engine.labeling.writers import LabelWriter

ProgressFn = Callable[[LabelProgress], None]
StopFn = Callable[[], bool]
LogFn = Callable[[str], None]


def load_captioner(options: CaptionOptions):
    """A loaded BLIP captioner, to pass as ``model=`` to several :func:`caption_images` calls."""
    from engine.registry.labelers import DEFAULT_CAPTIONER, load_class

    return load_class(DEFAULT_CAPTIONER)(options)   # BLIP, the one captioner


def load_tagger(options: TagOptions):
    """A loaded WD14 or DeepDanbooru tagger (engine/registry/labelers.py), reusable through ``model=``."""
    from engine.registry.labelers import load_class

    if options.tagger not in TAGGERS:
        raise LabelError(f"unknown tagger {options.tagger!r}; use one of {', '.join(TAGGERS)}")
    return load_class(options.tagger)(options)


def caption_images(paths: Iterable[str | Path], options: CaptionOptions | None = None, *,
                   progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                   log: LogFn | None = None, model=None) -> LabelSummary:
    """Caption ``paths`` with BLIP; writes ``<stem><caption_extension>`` and/or metadata."""
    opts = options or CaptionOptions()
    writer = LabelWriter("caption", opts.caption_extension, policy=opts.policy, sidecars=opts.sidecars,
                         metadata_file=opts.metadata_file, image_dir=opts.image_dir, clean=opts.clean,
                         separator=opts.separator)
    return run_labelling(paths, writer, lambda: model or load_captioner(opts), opts,
                         progress=progress, should_stop=should_stop, log=log, owned=model is None)


def tag_images(paths: Iterable[str | Path], options: TagOptions | None = None, *,
               progress: ProgressFn | None = None, should_stop: StopFn | None = None,
               log: LogFn | None = None, model=None) -> LabelSummary:
    """Tag ``paths`` with WD14 or DeepDanbooru; writes ``<stem><tags_extension>`` and/or metadata."""
    opts = options or TagOptions()
    if opts.tagger not in TAGGERS:
        raise LabelError(f"unknown tagger {opts.tagger!r}; use one of {', '.join(TAGGERS)}")
    writer = LabelWriter("tags", opts.tags_extension, policy=opts.policy, sidecars=opts.sidecars,
                         metadata_file=opts.metadata_file, image_dir=opts.image_dir, clean=opts.clean,
                         separator=opts.caption_separator)
    return run_labelling(paths, writer, lambda: model or load_tagger(opts), opts,
                         progress=progress, should_stop=should_stop, log=log, owned=model is None)


def cpu_estimate(per_image_s: float, remaining: int) -> str:
    from engine.console import format_duration

    return (f"running on the CPU: about {per_image_s:.2f} s per image (measured on the first batch), "
            f"so about {format_duration(per_image_s * remaining)} for the {remaining} image(s) left; "
            "a CUDA GPU is much faster")


def run_labelling(paths: Iterable[str | Path], writer: LabelWriter, factory, opts, *,
                  progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                  log: LogFn | None = None, owned: bool = True) -> LabelSummary:
    """Skip labelled images, load the model, run batches with prefetch, write as we go."""
    log = log or (lambda _text: None)
    summary = LabelSummary()
    all_paths = [Path(p) for p in paths]
    todo = [p for p in all_paths if writer.needs(p)]
    summary.skipped = len(all_paths) - len(todo)
    if not todo or (should_stop and should_stop()):
        summary.stopped = bool(todo)
        return summary

    def report(last_path: str = "", last_text: str = "", phase: str = "labelling", rate: float = 0.0):
        if progress is not None:
            progress(LabelProgress(summary.done, len(todo), summary.skipped, len(summary.failed), rate,
                                   last_path, last_text, phase))

    report(phase="loading")
    labeller = factory()
    summary.device = labeller.device
    if summary.device == "cpu":
        note = "no CUDA device: labelling runs on the CPU and will be slow (measuring the first batch...)"
        summary.warnings.append(note)
        log(note)
    start = time.perf_counter()
    try:
        batches = read_batches(todo, labeller.batch_size, labeller.prepare_one, labeller.prepare_batch,
                               depth=max(1, opts.prefetch_batches), exif_transpose=opts.exif_transpose)
        with closing(batches):
            for batch in batches:
                for path, reason in batch.failed:
                    summary.failed.append((str(path), reason))
                    log(f"skipped {path}: {reason}")
                last_path, last_text = _label_batch(batch, labeller, writer, summary, len(todo), log)
                elapsed = time.perf_counter() - start
                report(last_path, last_text, rate=summary.done / elapsed if elapsed > 0 else 0.0)
                if should_stop and should_stop():
                    summary.stopped = summary.done + len(summary.failed) < len(todo)
                    break
    finally:
        summary.written.extend(writer.finish())
        if writer.backup_folder is not None:
            summary.backups.append(str(writer.backup_folder))
        if owned and hasattr(labeller, "close"):
            labeller.close()
        summary.seconds = time.perf_counter() - start
        summary.images_per_s = summary.done / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _label_batch(batch, labeller, writer: LabelWriter, summary: LabelSummary, total: int,
                 log: LogFn) -> tuple[str, str]:
    """Run the model on one decoded batch and write its labels; the last (path, text) written."""
    if not batch.paths:
        return "", ""
    first = summary.first_batch_s is None
    t0 = time.perf_counter()
    try:
        texts = labeller.run(batch.inputs)
    except LabelError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory on one batch
        if first:
            raise LabelError(f"the model failed on the first batch: {describe_error(exc)}") from exc
        reason = f"model failed on this batch: {describe_error(exc)}"
        summary.failed.extend((str(p), reason) for p in batch.paths)
        log(f"{len(batch.paths)} image(s) not labelled: {reason}")
        return "", ""
    if first:
        summary.first_batch_s = time.perf_counter() - t0
        if summary.device == "cpu":
            per_image = summary.first_batch_s / len(batch.paths)
            note = cpu_estimate(per_image, total - len(batch.paths) - len(batch.failed))
            summary.warnings.append(note)
            log(note)
    last = ("", "")
    for path, text in zip(batch.paths, texts, strict=True):
        if not text.strip():
            # nothing above the thresholds / an empty caption: no empty file
            summary.done += 1
            summary.texts[str(path)] = ""
            log(f"no text for {path}: nothing written")
            continue
        try:
            final, changed = writer.write(path, text)
        except SidecarEncodingError as exc:   # the old file is kept as it is
            summary.failed.append((str(path), str(exc)))
            log(f"skipped {path}: {exc}")
            continue
        summary.texts[str(path)] = final
        summary.written.extend(changed)
        summary.done += 1
        last = (str(path), final)
    return last


def label_one(path: str | Path, model, *, exif_transpose: bool = True) -> str:
    """The text ``model`` (from load_captioner / load_tagger) gives one image; writes nothing.

    For an editor: the user sees the new caption and saves it (with undo) like a hand edit.
    Raises LabelError when the image cannot be read.
    """
    from engine.data.images import open_rgb

    try:
        item = model.prepare_one(open_rgb(path, exif_transpose=exif_transpose))
    except Exception as exc:  # noqa: BLE001 - unreadable image
        raise LabelError(f"{path}: cannot read the image ({describe_error(exc)})") from None
    return model.run(model.prepare_batch([item]))[0].strip()

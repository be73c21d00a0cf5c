"""Auto-captioning (BLIP) and auto-tagging (WD14, DeepDanbooru).

Importing this package is cheap: torch, transformers and onnxruntime load only when a
model is built. The CLI (``sdft caption`` / ``sdft tag``) lives in :mod:`engine.labeling.cli`.

Programmatic API (what the wizard's captions screen calls from a worker thread)::

    from engine.labeling import CaptionOptions, TagOptions, caption_images, tag_images

    summary = caption_images(
        paths,                                   # image files (str or Path)
        CaptionOptions(policy="skip"),           # skip | overwrite | append; model, batch_size, ...
        progress=lambda p: ...,                  # LabelProgress after each batch (on the calling thread)
        should_stop=lambda: stop_requested,      # polled before/after each batch
        log=lambda text: ...,                    # warnings: skipped images, CPU speed estimate
    )                                            # -> LabelSummary
    summary = tag_images(paths, TagOptions(tagger="wd14", thresh=0.35), progress=..., should_stop=...)

* ``policy="skip"`` (default) never touches an existing label and does not even run the
  model for such images: that is "caption missing". ``"overwrite"`` = "caption all"
  (or a single-image re-caption); ``"append"`` adds (tags merged without duplicates).
* Sidecars ``<stem>.caption`` / ``<stem>.txt`` are written atomically as each batch
  finishes; ``metadata_file=`` also (or with ``sidecars=False`` only) updates a kohya
  metadata JSON, once at the end. ``clean=True`` applies kohya's tag and caption cleanup.
* ``LabelSummary``: ``done``, ``skipped``, ``failed`` [(path, reason)], ``written`` files,
  ``texts`` {path: text}, ``images_per_s``, ``device``, ``first_batch_s``, ``stopped``,
  ``warnings``, ``tags_per_image``, ``tag_frequency()``, ``to_dict()``.
* ``LabelError`` (bad/missing model folder, offline hub id, bad option) is raised before
  any file is written; its message says how to fix it. Unreadable images never raise.
* To label several batches with one loaded model (e.g. re-captioning images one by one
  from an editor), build it once with ``load_captioner(options)`` / ``load_tagger(options)``
  and pass it as ``model=``; call ``model.close()`` when done.
  ``label_one(path, model)`` returns one image's text without writing anything (the
  wizard's editor shows it and the user saves it like a hand edit, with undo).
"""

from __future__ import annotations

from engine.labeling.options import (
    DEFAULT_BLIP,
    DEFAULT_WD14,
    CaptionOptions,
    LabelError,
    LabelProgress,
    LabelSummary,
    TagOptions,
)
from engine.labeling.runner import caption_images, label_one, load_captioner, load_tagger, tag_images

__all__ = [
    "DEFAULT_BLIP", "DEFAULT_WD14", "CaptionOptions", "TagOptions", "LabelProgress", "LabelSummary",
    "LabelError", "caption_images", "tag_images", "load_captioner", "load_tagger", "label_one",
]

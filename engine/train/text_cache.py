"""Text-encoder outputs encoded once, when the text encoders are frozen (``cache.text_encoder_outputs``,
kohya's ``--cache_text_encoder_outputs`` and ``--cache_text_encoder_outputs_to_disk``).

What a step feeds the U-Net from the text depends on the caption alone once the encoders are
frozen, so the cache is keyed by the caption text a draw produces: every training and
validation image's caption, and the empty caption when caption dropout may give it. The
family refuses the options that make a caption differ per draw (shuffle, tag dropout, token
warm-up, wildcards) before a run starts (engine/families/sdxl/adapter.py ``refusals``).

Each caption is encoded exactly as an uncached step encodes it (the training device, the
accelerator's autocast, the frozen encoders' dtype), so cached and uncached runs train on the
same numbers, and a resumed run finds them again.

On disk (docs/sdxl.md, "Cached text-encoder outputs") an entry is
``<cache folder>/text-encoder-outputs/<key[:2]>/<key>.safetensors`` holding kohya's three
arrays by their ``_te_outputs.npz`` names (``hidden_state1``, ``hidden_state2``, ``pool2``).
Unlike kohya's ``<image>_te_outputs.npz`` beside the image, whose presence is all kohya checks,
the key hashes the caption, the token length, both encoders' weights and the dtype: an edited
caption or another base model gets new entries instead of stale ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable

import torch

FOLDER = "text-encoder-outputs"
VERSION = "1"
ENCODE_BATCH = 8   # captions per encoder call while filling the cache


def cache_folder(cfg) -> Path:
    """The folder disk entries go to: beside the latent cache (``cache.cache_dir``, else
    ``<output_dir>/.latent-cache``), where ``sdft cache prune`` leaves them alone."""
    root = Path(cfg.cache.cache_dir) if cfg.cache.cache_dir else Path(cfg.train.output_dir) / ".latent-cache"
    if not root.is_absolute():
        root = Path(cfg.base_dir) / root
    return root / FOLDER


def captions_to_cache(data) -> list[str]:
    """Every caption a step or a validation pass can draw, sorted: each image's caption as the
    data pipeline processes it (deterministic once the varying options are refused), and the
    empty caption when a subset drops captions."""
    from engine.data.processing import process_caption

    captions: set[str] = set()
    for item in data.items:
        subset = item.subset
        if subset.caption_dropout_rate > 0 or subset.caption_dropout_every_n_epochs > 0:
            captions.add("")
        steady = dataclasses.replace(subset, caption_dropout_rate=0.0, caption_dropout_every_n_epochs=0)
        captions.add(process_caption(item.caption, steady, random.Random(0), epoch=1, step=data.max_train_steps,
                                     max_train_steps=data.max_train_steps))
    return sorted(captions)


def encoders_identity(encoders: list) -> str:
    """sha256 over the frozen encoders' weights (names, shapes, dtypes, bytes)."""
    from engine.data.cache_keys import vae_identity  # the one module hash: it hashes any module

    return hashlib.sha256("".join(vae_identity(module) for module in encoders).encode()).hexdigest()


def entry_key(caption: str, max_token_length: int, encoders_id: str, dtype: torch.dtype) -> str:
    fields = {"caption": caption, "max_token_length": max_token_length, "encoders": encoders_id,
              "dtype": str(dtype).replace("torch.", ""), "version": VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class TextOutputCache:
    """Caption -> that caption's outputs (CPU), or the file that holds them."""

    def __init__(self, rows: dict[str, Any] | None = None, files: dict[str, Path] | None = None,
                 output_type: Any = None):
        self.rows = rows or {}
        self.files = files or {}
        self.output_type = output_type   # the encoder's output class: its stack / from_tensors

    def __len__(self) -> int:
        return len(self.rows) + len(self.files)

    def lookup(self, captions: list[str]):
        """The batch's outputs, stacked in caption order (on the CPU)."""
        rows = []
        for caption in captions:
            row = self.rows.get(caption)
            if row is None:
                file = self.files.get(caption)
                if file is None:
                    raise KeyError(f"no cached text-encoder output for the caption {caption[:80]!r}: the cache "
                                   "was filled from the data's captions, which this one is not (a bug)")
                row = _read(file, self.output_type)
            rows.append(row)
        return self.output_type.stack(rows)


def fill_text_cache(mode: str, folder: Path | None, captions: list[str], encoder, device, dtype: torch.dtype,
                    autocast, *, max_token_length: int, encoders: list,
                    progress: Callable[[int, int], None] | None = None) -> tuple[TextOutputCache, int]:
    """Encode every caption (on disk: only those without a sound entry); returns the cache and
    how many captions were encoded now."""
    files: dict[str, Path] = {}
    todo = list(captions)
    if mode == "disk":
        assert folder is not None
        identity = encoders_identity(encoders)
        files = {c: _entry_path(folder, entry_key(c, max_token_length, identity, dtype)) for c in captions}
        todo = [c for c in captions if not _sound(files[c])]
    rows: dict[str, Any] = {}
    output_type = getattr(encoder, "output_type", None)   # stack / row / from_tensors of its outputs
    if output_type is None:
        raise TypeError(f"text-encoder output caching is not built for {type(encoder).__name__}")
    for start in range(0, len(todo), ENCODE_BATCH):
        chunk = todo[start:start + ENCODE_BATCH]
        with torch.no_grad(), autocast():
            out = encoder.encode(encoder.tokenize(chunk), device, dtype)
        out = out.to("cpu")
        for index, caption in enumerate(chunk):
            row = out.row(index)
            if mode == "disk":
                _write(files[caption], row)
            else:
                rows[caption] = row
        if progress is not None:
            progress(min(start + ENCODE_BATCH, len(todo)), len(todo))
    if mode == "disk":
        return TextOutputCache(files=files, output_type=output_type), len(todo)
    return TextOutputCache(rows=rows, output_type=output_type), len(todo)


def _entry_path(folder: Path, key: str) -> Path:
    return folder / key[:2] / f"{key}.safetensors"


def _sound(file: Path) -> bool:
    """An entry that reads back whole (the checksum in its metadata matches)."""
    if not file.is_file():
        return False
    from safetensors import safe_open

    from engine.data.cache_entries import tensors_sha256

    try:
        from safetensors.torch import load_file

        tensors = load_file(str(file))
        with safe_open(str(file), framework="pt") as fh:
            expected = (fh.metadata() or {}).get("sdft.tensors_sha256")
    except Exception:  # noqa: BLE001 - an unreadable entry is encoded again
        return False
    return expected is not None and tensors_sha256(tensors) == expected and all(
        bool(torch.isfinite(t).all()) for t in tensors.values())


def _write(file: Path, row) -> None:
    from engine.data.cache_entries import tensors_sha256, write_entry

    tensors = {name: t.contiguous() for name, t in row.tensors().items()}
    write_entry(file, tensors, {"sdft.tensors_sha256": tensors_sha256(tensors), "sdft.version": VERSION})


def _read(file: Path, output_type):
    from safetensors.torch import load_file

    return output_type.from_tensors(load_file(str(file)))

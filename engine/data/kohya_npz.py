"""Latents kohya-ss/sd-scripts cached beside the images (``.npz``), imported when they still
fit the image and its bucket (kohya's file names of every era)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.data.cache_entries import check_latents


def _npz_latent(data, base: str, latent_hw: tuple[int, int]) -> np.ndarray | None:
    h, w = latent_hw
    for name in (base, f"{base}_{h}x{w}"):
        if name in data.files:
            return data[name]
    return None


# kohya's names, by the suffix after the image's stem: "<stem>.npz" (2022-12 … 2024-07, still
# preferred at HEAD), then HEAD's "<stem>_WWWWxHHHH_sd.npz" and "..._sdxl.npz".
OLD, SD, SDXL = ".npz", "_sd.npz", "_sdxl.npz"
SD_NAMES = (OLD, SD, SDXL)
# An SDXL run imports only what kohya's SDXL scripts write: the old name was written by SD runs
# too (SD's VAE: other latents), and kohya would take it for SDXL all the same.
SDXL_NAMES = (SDXL,)


def kohya_npz_candidates(image: Path, original_size: tuple[int, int],
                         names: tuple[str, ...] | None = None) -> list[Path]:
    """Files kohya may have written for ``image``, in preference order, of the ``names`` a family
    reads (default: every era's, ``SD_NAMES``)."""
    stem = image.with_suffix("")
    w, h = original_size
    return [stem.with_name(stem.name + ".npz") if name == OLD else stem.with_name(f"{stem.name}_{w:04d}x{h:04d}{name}")
            for name in (names or SD_NAMES)]


def _older_than(cache_file: Path, image: Path) -> bool:
    try:
        return cache_file.stat().st_mtime < image.stat().st_mtime
    except OSError:
        return True


def import_kohya_npz(image: Path, original_size: tuple[int, int], bucket: tuple[int, int],
                     flip: bool, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor] | None:
    """Latents from a kohya npz when one exists and fits the bucket; None otherwise.

    The npz holds one posterior draw (unscaled); it becomes ``mean`` with ``std = 0`` ("kohya"
    mode). With flip_aug the flipped entry must exist too.
    """
    shape = (4, bucket[1] // 8, bucket[0] // 8)
    hw = (shape[1], shape[2])
    for file in kohya_npz_candidates(image, original_size, names):
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

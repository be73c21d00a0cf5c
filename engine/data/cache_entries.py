"""One cache entry on disk: its checks (shape, values, checksum), loading and writing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from engine import atomic


def check_latents(tensors: dict[str, torch.Tensor], shape: tuple[int, int, int], flip: bool,
                  mask: bool = False) -> str | None:
    """None when the entry is usable: right shape, floating point, finite (and with ``mask``, a
    loss mask of shape (1, h, w) with values in [0, 1])."""
    if mask:
        m = tensors.get("mask")
        if m is None:
            return "missing tensor 'mask'"
        if tuple(m.shape) != (1, *shape[1:]):
            return f"mask has shape {tuple(m.shape)}, expected {(1, *shape[1:])}"
        if not m.is_floating_point() or not bool(((m >= 0) & (m <= 1)).all()):
            return "mask has values outside [0, 1]"
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


def load_entry(file: Path, shape: tuple[int, int, int], flip: bool, verify: str,
               mask: bool = False) -> tuple[dict | None, str | None]:
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
    problem = check_latents(tensors, shape, flip, mask)
    if problem is None and expected is not None and tensors_sha256(tensors) != expected:
        problem = "its checksum does not match its contents"
    return (None, problem) if problem else (tensors, None)



def write_entry(file: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic.atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata=meta)

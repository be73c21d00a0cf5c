"""Host-to-GPU copies that do not stall the GPU (docs/precision.md).

A copy from ordinary (pageable) memory makes the CPU wait until the GPU has finished everything
queued before it; from page-locked ("pinned") memory it is queued like a kernel. The batch loader
pins each batch on its thread, so the training thread's ``.to(device, non_blocking=True)`` returns
at once. torch keeps a pinned block alive until the copy queued from it has run.
"""

from __future__ import annotations

import dataclasses

import torch


def pinned(tensor):
    return tensor.pin_memory() if isinstance(tensor, torch.Tensor) and not tensor.is_pinned() else tensor


def pin_batch(batch) -> None:
    """Pin a loaded batch's tensors in place: latents or pixels, masks and token ids/weights."""
    for name in ("latents", "pixels", "masks"):
        value = getattr(batch, name, None)
        if value is not None:
            setattr(batch, name, pinned(value))
    tokens = getattr(batch, "tokens", None)
    if tokens is not None and dataclasses.is_dataclass(tokens):
        changes = {f.name: pinned(getattr(tokens, f.name)) for f in dataclasses.fields(tokens)
                   if isinstance(getattr(tokens, f.name), torch.Tensor)}
        batch.tokens = dataclasses.replace(tokens, **changes)

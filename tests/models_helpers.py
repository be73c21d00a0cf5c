"""Helpers for the models tests: tiny components built once, state-dict comparison, file surgery."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def tiny(flavour: str, seed: int = 0) -> dict:
    """Tiny SD components (cached: tests must not modify them)."""
    from engine.models.tiny import TinySpec, build_tiny_components

    return build_tiny_components(TinySpec(flavour, seed=seed))


def save_tiny_single(path: Path, flavour: str, **kwargs) -> Path:
    from engine.models.save import save_model

    c = tiny(flavour)
    kwargs.setdefault("precision", "float")
    kwargs.setdefault("v_parameterization", flavour == "sd2")
    return save_model(path, unet=c["unet"], text_encoder=c["text_encoder"], vae=c["vae"],
                      v2=flavour == "sd2", **kwargs)


def assert_same_weights(a, b) -> None:
    """Bit-exact equality of two models' state dicts (names compared without text_model.)."""
    import torch

    def norm(m):
        return {k.removeprefix("text_model."): v for k, v in m.state_dict().items()}

    sa, sb = norm(a), norm(b)
    assert set(sa) == set(sb), sorted(set(sa) ^ set(sb))[:5]
    bad = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not bad, bad[:5]


def read_file(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def write_file(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


class Evil:
    """Unpickling this runs a shell command (what a malicious .ckpt does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))

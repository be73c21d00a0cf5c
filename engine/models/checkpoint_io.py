"""Reading raw tensors from .safetensors and .ckpt files, safely.

A .ckpt is a pickle, and a pickle can run any code when loaded. We load with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
Old PyTorch-Lightning checkpoints (SD 1.x era) also reference Lightning classes (e.g.
the ModelCheckpoint callback used as a dict key); those, and only those, are replaced by
inert stubs. Anything else is refused unless the user explicitly allows an
unsafe pickle.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from engine.models.errors import ModelLoadError

LIGHTNING_PREFIXES = ("pytorch_lightning.", "lightning.pytorch.", "lightning_fabric.")
# torch words this two ways depending on whether the module is known to be dangerous.
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
MAX_STUBS = 64


def is_safetensors(path: Path) -> bool:
    """By extension, or by the header shape (8-byte length then '{') for odd names."""
    from engine.models.safetensors_header import looks_like_safetensors

    return looks_like_safetensors(path)


def unreadable_safetensors(path: Path, exc: Exception) -> str:
    """The one message for a .safetensors file that cannot be read (header, layout or data)."""
    try:
        size = f" ({path.stat().st_size:,} bytes)"
    except OSError:
        size = ""
    return (f"{path}: cannot read it as safetensors ({str(exc).removeprefix(f'{path}: ')}). The file{size} is "
            "damaged, truncated or not a safetensors file: download it again, or check the path")


def read_safetensors(path: Path) -> tuple[dict, dict[str, str]]:
    from safetensors import safe_open

    from engine.models.safetensors_header import HeaderError, check_layout

    try:
        check_layout(path)   # the rules --check applies: dtypes, shapes, offsets
    except HeaderError as exc:
        raise ModelLoadError(unreadable_safetensors(path, exc)) from exc
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError, OSError: bad header, truncated data
        raise ModelLoadError(unreadable_safetensors(path, exc)) from exc
    return tensors, metadata


def _lightning_stub(qualified: str):
    """An inert class standing in for a Lightning class (it keeps whatever state it is given)."""
    module, _, name = qualified.rpartition(".")

    class Stub(dict):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def __setstate__(self, state):
            if isinstance(state, dict):
                self.update(state)

    Stub.__name__ = Stub.__qualname__ = name
    Stub.__module__ = module
    return Stub


def _torch_load_restricted(path: Path, mmap: bool = False) -> Any:
    """torch.load(weights_only=True), stubbing Lightning globals one by one as they are met.
    ``mmap``: tensor data is mapped, not read (``--check``); a file in the legacy, non-zip
    format cannot be mapped and is read."""
    import torch

    stubs: list = []
    while True:
        try:
            with torch.serialization.safe_globals(stubs):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                except RuntimeError as exc:
                    if not (mmap and "mmap" in str(exc)):
                        raise
                    return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            m = _UNSUPPORTED_GLOBAL.search(str(exc))
            if m and m.group(1).startswith(LIGHTNING_PREFIXES) and len(stubs) < MAX_STUBS:
                name = m.group(1)
                stubs.append((_lightning_stub(name), name))
                continue
            raise


def read_torch_checkpoint(path: Path, allow_unsafe_pickle: bool = False, report: list[str] | None = None,
                          scan: bool = False) -> Any:
    """Load a pickled checkpoint safely; explain a refusal. ``scan`` (``--check``): map the
    tensor data instead of reading it, and never run the unsafe unpickler: a file that needs it
    (and is allowed to) gives None."""
    import torch

    try:
        return _torch_load_restricted(path, mmap=scan)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        m = _UNSUPPORTED_GLOBAL.search(text)
        if m is None and "Weights only load failed" not in text:
            raise ModelLoadError(f"{path}: not a PyTorch checkpoint ({text.splitlines()[0]})") from exc
        what = m.group(1) if m else "an object that is not plain tensors"
        if not allow_unsafe_pickle:
            raise ModelLoadError(
                f"{path}: refused to load this .ckpt: its pickle needs {what}, and loading it would "
                "let the file run arbitrary code on your machine. Convert it to .safetensors with a "
                "tool you trust, or, only if you trust where the file came from, pass "
                "--allow-unsafe-pickle (model.allow_unsafe_pickle = true)"
            ) from exc
        if scan:
            return None   # --check runs no code from the file; training will, as allowed
        if report is not None:
            report.append(f"warning: {path.name} was loaded as an UNSAFE pickle (it needs {what}) "
                          "because you allowed it")
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        size = path.stat().st_size
        raise ModelLoadError(
            f"{path}: cannot read it as a PyTorch checkpoint ({str(exc).splitlines()[0]}). The file "
            f"({size:,} bytes) is truncated or not a checkpoint: download it again, or check the path"
        ) from exc


def read_state_dict(path: Path, *, allow_unsafe_pickle: bool = False,
                    report: list[str] | None = None) -> tuple[dict, dict[str, str], dict]:
    """(tensors, metadata strings, extra info such as global_step) from a single file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if is_safetensors(path):
        tensors, metadata = read_safetensors(path)
        return tensors, metadata, {}
    obj = read_torch_checkpoint(path, allow_unsafe_pickle, report)
    return _state_dict_of(obj, path)


def scan_state_dict(path: Path, *, allow_unsafe_pickle: bool = False) -> tuple[dict, dict[str, str], dict] | None:
    """:func:`read_state_dict` of a pickled checkpoint for ``--check``: unpickled by the
    weights-only unpickler with the tensor data mapped, not read, and no model built; None when
    only the (allowed) unsafe unpickler could read it, which ``--check`` never runs."""
    obj = read_torch_checkpoint(path, allow_unsafe_pickle, scan=True)
    return None if obj is None else _state_dict_of(obj, path)


def _state_dict_of(obj, path: Path) -> tuple[dict, dict[str, str], dict]:
    """(tensors, metadata, info) of an unpickled checkpoint; ModelLoadError when it is none."""
    import torch

    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict; not a checkpoint")
    info = {k: obj[k] for k in ("epoch", "global_step") if isinstance(obj.get(k), int)}
    metadata = obj.get("sdft_metadata") if isinstance(obj.get("sdft_metadata"), dict) else {}
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: 'state_dict' is a {type(sd).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        if sd and all(isinstance(k, int) for k in sd):
            kind = "a hypernetwork (load it with hypernetwork.weights, not as a base model)"
        else:
            kind = f"no tensors under string keys (first keys: {[str(k) for k in list(sd)[:3]]})"
        raise ModelLoadError(f"{path}: {kind}; not a Stable Diffusion checkpoint")
    return tensors, {str(k): str(v) for k, v in metadata.items()}, info

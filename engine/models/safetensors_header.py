"""The one reader of a .safetensors header: tensor names, dtypes, shapes and metadata.

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON
(docs/formats.md). Reading it needs no torch and no weights, so ``--check``, the wizard and
the loader's dtype probe all use this instead of opening the file with the safetensors package.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# A real header is a few hundred KiB; a larger length means the file is not safetensors.
MAX_HEADER_BYTES = 100_000_000
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
               "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class HeaderError(ValueError):
    """The file is not a readable safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it (``shape`` is all the detection rules look at)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    def first_dtype(self) -> str | None:
        """The torch name of the first tensor's dtype (float32, float16, bfloat16), if any."""
        for info in self.tensors.values():
            return DTYPE_NAMES.get(info.dtype)
        return None


def looks_like_safetensors(path: Path) -> bool:
    """By extension, or by the header's shape (a sane length then '{') for odd file names."""
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < MAX_HEADER_BYTES


def read_header(path: Path | str) -> SafetensorsHeader:
    """Read the header; :class:`HeaderError` (or OSError) names what is wrong."""
    path = Path(path)
    with open(path, "rb") as fh:
        raw_length = fh.read(8)
        if len(raw_length) < 8:
            raise HeaderError(f"{path}: shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw_length)
        if length > MAX_HEADER_BYTES:
            raise HeaderError(f"{path}: header length {length:,} bytes is not plausible")
        raw = fh.read(length)
    if len(raw) < length:
        raise HeaderError(f"{path}: the header is truncated ({len(raw):,} of {length:,} bytes)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HeaderError(f"{path}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HeaderError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or "shape" not in info:
            raise HeaderError(f"{path}: tensor {name!r} has no shape in the header")
        tensors[name] = TensorInfo(str(info.get("dtype", "")), tuple(int(d) for d in info["shape"]))
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in metadata.items()})

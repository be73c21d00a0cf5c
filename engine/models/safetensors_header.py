"""The one reader of a .safetensors header: tensor names, dtypes, shapes and metadata.

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON
(docs/formats.md). Reading it needs no torch and no weights, so ``--check``, the wizard and
the loader's dtype probe all use this instead of opening the file with the safetensors package.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

# A real header is a few hundred KiB; a larger length means the file is not safetensors.
MAX_HEADER_BYTES = 100_000_000
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
               "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
# Bytes per element of every dtype the format defines; the float ones can hold weights.
ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
              "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


class HeaderError(ValueError):
    """The file is not a readable safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it (``shape`` is all the detection rules look at)."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int] | None = None   # [begin, end) in the data after the header


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int = 0   # 8 + the header's length: where tensor data begins

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
        offsets = info.get("data_offsets")
        try:
            shape = tuple(int(d) for d in info["shape"])
            offsets = (int(offsets[0]), int(offsets[1])) if offsets is not None else None
        except (TypeError, ValueError, IndexError):
            raise HeaderError(f"{path}: tensor {name!r} has a shape or data_offsets that are not numbers") from None
        tensors[name] = TensorInfo(str(info.get("dtype", "")), shape, offsets)
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + length)


def check_layout(path: Path | str, header: SafetensorsHeader | None = None) -> SafetensorsHeader:
    """The header, once every tensor is one training can load: a known dtype (a float one for
    weights and biases), a shape of non-negative sizes, and data offsets that lie inside the
    file, hold exactly shape x dtype bytes and do not overlap. HeaderError names the first
    tensor that is not. Reads the header only."""
    path = Path(path)
    header = header or read_header(path)
    data_length = path.stat().st_size - header.data_start
    spans = []
    for name, info in header.tensors.items():
        size = ITEM_SIZES.get(info.dtype)
        if size is None:
            raise HeaderError(f"{path}: tensor {name!r} has the unknown dtype {info.dtype!r}")
        if name.endswith((".weight", ".bias")) and info.dtype not in FLOAT_DTYPES:
            raise HeaderError(f"{path}: tensor {name!r} is stored as {info.dtype}, an integer type; model weights "
                              "are floating point")
        if any(d < 0 for d in info.shape):
            raise HeaderError(f"{path}: tensor {name!r} has the impossible shape {list(info.shape)}")
        if info.offsets is None:
            raise HeaderError(f"{path}: tensor {name!r} has no data_offsets")
        begin, end = info.offsets
        count = 1
        for d in info.shape:
            count *= d
        if not 0 <= begin <= end <= data_length or end - begin != count * size:
            raise HeaderError(f"{path}: tensor {name!r} claims bytes {begin}..{end} for {count:,} {info.dtype} "
                              f"values, but the data holds {data_length:,} bytes: the file is damaged or truncated")
        spans.append((begin, end, name))
    spans.sort()
    for (_b1, end1, first), (begin2, _e2, second) in pairwise(spans):
        if begin2 < end1:
            raise HeaderError(f"{path}: tensors {first!r} and {second!r} overlap in the file: it is damaged")
    return header

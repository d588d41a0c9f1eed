"""The safetensors container, read and written as bytes: header parsing with full validation, and
headers computed from shapes alone so a writer can stream tensor bytes after them.

Format: 8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape, data_offsets;
optional `__metadata__`), then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from hubtools.errors import CorruptFileError

_DTYPES: tuple[tuple[str, torch.dtype], ...] = (
    ("F64", torch.float64), ("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16),
    ("I64", torch.int64), ("I32", torch.int32), ("I16", torch.int16), ("I8", torch.int8),
    ("U8", torch.uint8), ("BOOL", torch.bool),
    ("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2),
)
MAX_HEADER = 100 * 1024 * 1024


def dtype_from_code(code: str, *, where: str) -> torch.dtype:
    for name, dtype in _DTYPES:
        if name == code:
            return dtype
    raise CorruptFileError(f"{where}: unsupported safetensors dtype '{code}'")


def dtype_code(dtype: torch.dtype) -> str:
    for name, known in _DTYPES:
        if known == dtype:
            return name
    raise ValueError(f"dtype {dtype} has no safetensors code")


def nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * dtype.itemsize


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor in a safetensors file: absolute byte offset in the file and length."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    length: int


def read_header(path: Path) -> tuple[list[HeaderEntry], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data.

    Returns:
        Entries in data order with absolute offsets, and the `__metadata__` mapping.

    Raises:
        CorruptFileError: truncated file, malformed JSON, overlapping or out-of-range offsets.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path}: truncated safetensors file ({size} bytes, expected at least 8)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CorruptFileError(f"{path}: corrupt safetensors header (header length {n}, file size {size})")
        try:
            raw = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptFileError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(raw, dict):
        raise CorruptFileError(f"{path}: corrupt safetensors header (expected a JSON object)")
    metadata = raw.pop("__metadata__", None) or {}
    entries = [_entry(path, name, info, 8 + n) for name, info in raw.items()]
    entries.sort(key=lambda e: e.offset)
    cursor = 8 + n
    for e in entries:
        if e.offset != cursor:
            raise CorruptFileError(f"{path}: tensor '{e.name}' starts at byte {e.offset - 8 - n} of the data, "
                                   f"expected {cursor - 8 - n} (overlapping or gapped offsets)")
        cursor += e.length
    if cursor > size:
        raise CorruptFileError(f"{path}: truncated (header needs {cursor} bytes, file has {size})")
    return entries, metadata


def _entry(path: Path, name: str, info: object, base: int) -> HeaderEntry:
    try:
        assert isinstance(info, dict)
        dtype = dtype_from_code(info["dtype"], where=f"{path}: tensor '{name}'")
        shape = tuple(int(x) for x in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
    except (AssertionError, KeyError, TypeError, ValueError):
        raise CorruptFileError(f"{path}: corrupt header entry for tensor '{name}'") from None
    if end - begin != nbytes(dtype, shape):
        raise CorruptFileError(f"{path}: tensor '{name}' has {end - begin} bytes, "
                               f"expected {nbytes(dtype, shape)} for {dtype} {list(shape)}")
    return HeaderEntry(name, dtype, shape, base + begin, end - begin)


def build_header(tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """The complete header bytes (length prefix included) for tensors laid out in the given order.

    Padded with spaces to a multiple of 8 bytes, as the safetensors library does.

    Example:
        >>> len(build_header([("a", torch.float32, (2,))], {"format": "pt"})) % 8
        0
    """
    body: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in tensors:
        size = nbytes(dtype, shape)
        body[name] = {"dtype": dtype_code(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(body, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text

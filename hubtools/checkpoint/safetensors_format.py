"""The safetensors container, read and written as bytes: header parsing with full validation, and
headers computed from shapes alone so a writer can stream tensor bytes after them.

Format: 8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape, data_offsets;
optional `__metadata__`), then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import math
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hubtools.dtypes import DType
from hubtools.errors import CorruptFileError, InvalidValueError

if TYPE_CHECKING:
    import torch

# (safetensors code, torch name, bytes per element), from `hubtools.dtypes.DType`. Codes, not torch objects,
# travel through the byte-copy path, so converting never needs to import torch unless a tensor is cast.
_DTYPES: tuple[tuple[str, str, int], ...] = tuple((d.code, d.value, d.itemsize) for d in DType)
MAX_HEADER = 100 * 1024 * 1024


def dtype_code(dtype: Any) -> str:
    """The safetensors code of a torch dtype, a torch name ("bfloat16") or a code ("BF16").

    Raises:
        InvalidValueError: an unknown dtype.
    """
    text = str(dtype).removeprefix("torch.")
    for code, name, _ in _DTYPES:
        if text in (code, name):
            return code
    raise InvalidValueError(f"dtype '{dtype}': expected one of {', '.join(name for _, name, _ in _DTYPES)}")


def dtype_name(dtype: Any) -> str:
    """The torch name of a code, a torch dtype or a name: the one spelling reports and configs use.

    Example:
        >>> dtype_name("BF16"), dtype_name("float32")
        ('bfloat16', 'float32')
    """
    code = dtype_code(dtype)
    return next(name for c, name, _ in _DTYPES if c == code)


def itemsize(code: str) -> int:
    return next(size for c, _, size in _DTYPES if c == code)


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a code (imports torch)."""
    import torch

    return getattr(torch, dtype_name(code))  # type: ignore[no-any-return]


def nbytes(dtype: Any, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * itemsize(dtype_code(dtype))


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor in a safetensors file: absolute byte offset in the file and length."""

    name: str
    code: str
    shape: tuple[int, ...]
    offset: int
    length: int

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.code)


def read_header(
    path: Path, *, stream: BinaryIO | None = None, size: int | None = None
) -> tuple[list[HeaderEntry], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data.

    Args:
        stream, size: read from this stream of `size` bytes instead of opening `path` (a remote file);
            `path` still names the file in messages.

    Returns:
        Entries in data order with absolute offsets, and the `__metadata__` mapping.

    Raises:
        CorruptFileError: truncated file, malformed JSON, overlapping or out-of-range offsets.
    """
    if stream is None:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # opening a FIFO would block
            raise CorruptFileError(f"{path}: not a regular file")
        size = info.st_size
    elif size is None:
        raise CorruptFileError(f"{path}: expected the size of a streamed file, found none")
    with stream if stream is not None else path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path}: truncated safetensors file ({size} bytes, expected at least 8)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CorruptFileError(f"{path}: corrupt safetensors header (header length {n}, file size {size})")
        try:
            raw = json.loads(f.read(n))
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting, huge ints
            raise CorruptFileError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(raw, dict):
        raise CorruptFileError(f"{path}: corrupt safetensors header (expected a JSON object)")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    entries = [_entry(path, name, info, 8 + n) for name, info in raw.items()]
    entries.sort(key=lambda e: e.offset)
    cursor = 8 + n
    for e in entries:
        if e.offset != cursor:
            raise CorruptFileError(
                f"{path}: tensor '{e.name}' starts at byte {e.offset - 8 - n} of the data, "
                f"expected {cursor - 8 - n} (overlapping or gapped offsets)"
            )
        cursor += e.length
    if cursor > size:
        raise CorruptFileError(f"{path}: truncated (header needs {cursor} bytes, file has {size})")
    return entries, metadata


def _counts(value: object, length: int | None) -> tuple[int, ...] | None:
    """`value` as a tuple of non-negative integers (JSON ints only: no floats, strings or bools)."""
    if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) > 16:
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62 for x in value):
        return None
    return tuple(value)


def _entry(path: Path, name: str, info: object, base: int) -> HeaderEntry:
    code = info.get("dtype") if isinstance(info, dict) else None
    if isinstance(info, dict) and not any(code == c for c, _, _ in _DTYPES):
        shown = code if isinstance(code, str) and len(code) < 20 else type(code).__name__
        raise CorruptFileError(f"{path}: tensor '{name}': unsupported safetensors dtype '{shown}'")
    shape = _counts(info.get("shape"), None) if isinstance(info, dict) else None
    offsets = _counts(info.get("data_offsets"), 2) if isinstance(info, dict) else None
    if shape is None or offsets is None or not isinstance(code, str):
        raise CorruptFileError(
            f"{path}: corrupt header entry for tensor '{name[:200]}' "
            "(expected dtype, shape and data_offsets as non-negative integers)"
        )
    begin, end = offsets
    if end - begin != nbytes(code, shape):
        raise CorruptFileError(
            f"{path}: tensor '{name}' has {end - begin} bytes, "
            f"expected {nbytes(code, shape)} for {dtype_name(code)} {list(shape)}"
        )
    return HeaderEntry(name, code, shape, base + begin, end - begin)


def build_header(tensors: list[tuple[str, Any, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """The complete header bytes (length prefix included) for tensors laid out in the given order.

    Padded with spaces to a multiple of 8 bytes, as the safetensors library does.

    Example:
        >>> len(build_header([("a", "F32", (2,))], {"format": "pt"})) % 8
        0
    """
    body: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in tensors:
        size = nbytes(dtype, shape)
        body[name] = {"dtype": dtype_code(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text

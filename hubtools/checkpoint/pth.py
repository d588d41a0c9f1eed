"""Lazy, safe reading of torch `.pth` zip archives, also when split into byte-concatenated parts.

The pickle is interpreted by a restricted unpickler that accepts only the globals needed to rebuild
tensors (never code), and storages are resolved to byte ranges inside the stored (uncompressed) zip
entries, so tensor bytes can be streamed straight from disk. The 8x7B torrent's
`consolidated.00.pth-split0 ... -splitN` parts are read in place through `ConcatFile`.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtools.checkpoint.safetensors_format import itemsize
from hubtools.errors import CorruptFileError, UnsafePickleError

Segment = tuple[Path, int, int]  # (file, offset, length)

_STORAGE_CODES = {  # torch storage class -> safetensors dtype code
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}


class ConcatFile(io.RawIOBase):
    """A read-only, seekable view of several files as one byte stream (no joined copy on disk)."""

    def __init__(self, parts: list[Path]) -> None:
        self.parts = parts
        self.sizes = [p.stat().st_size for p in parts]
        self.starts = [sum(self.sizes[:i]) for i in range(len(parts))]
        self.size = sum(self.sizes)
        self.pos = 0
        self._fds = [os.open(p, os.O_RDONLY) for p in parts]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        for path, offset, length in self.segments(self.pos, min(len(view), self.size - self.pos)):
            chunk = os.pread(self._fds[self.parts.index(path)], length, offset)
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        self.pos += done
        return done

    def segments(self, start: int, length: int) -> list[Segment]:
        """Map a byte range of the joined stream onto (part, offset, length) pieces."""
        out: list[Segment] = []
        for path, part_start, size in zip(self.parts, self.starts, self.sizes, strict=True):
            lo, hi = max(start, part_start), min(start + length, part_start + size)
            if lo < hi:
                out.append((path, lo - part_start, hi - lo))
        return out

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        super().close()


@dataclass(frozen=True)
class StorageRef:
    key: str
    code: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor as the pickle describes it: a view into a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def contiguous(self) -> bool:
        expected, acc = [], 1
        for dim in reversed(self.shape):
            expected.append(acc)
            acc *= dim
        return tuple(reversed(expected)) == self.stride or math.prod(self.shape) <= 1


def _rebuild_tensor_v2(
    storage: StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> TensorRef:
    return TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, code: str) -> None:
        self.code = code


class _RestrictedUnpickler(pickle.Unpickler):
    """Accepts tensor-rebuild globals only; anything else raises UnsafePickleError before it runs."""

    def __init__(self, file: Any, where: str) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_CODES:
            return _StorageType(_STORAGE_CODES[name])
        raise UnsafePickleError(
            f"{self.where}: refusing to unpickle global '{module}.{name}' "
            "(only tensor data is accepted; the file was not executed)"
        )

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"{self.where}: unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self.where}: unexpected storage type {storage_type!r}")
        return StorageRef(str(key), storage_type.code, int(numel))


@dataclass(frozen=True)
class PthTensor:
    """Where a tensor's bytes live: byte segments of its storage plus the view to apply."""

    name: str
    code: str
    shape: tuple[int, ...]
    ref: TensorRef
    storage_segments: tuple[Segment, ...]


def read_pth_index(parts: list[Path], *, stream: ConcatFile | None = None) -> list[PthTensor]:
    """Index a `.pth` archive (one file, or its split parts in order) without reading tensor data.

    Args:
        stream: read through this joined view of `parts` (e.g. remote parts) instead of opening them.

    Raises:
        CorruptFileError: not a zip archive, compressed entries, truncated parts.
        UnsafePickleError: the pickle references code.
    """
    where = str(parts[0]) if len(parts) == 1 else f"{parts[0]} (+{len(parts) - 1} parts)"
    stream = ConcatFile(parts) if stream is None else stream
    try:
        try:
            archive = zipfile.ZipFile(stream)  # type: ignore[arg-type]
        except (zipfile.BadZipFile, OSError, EOFError):
            raise CorruptFileError(f"{where}: not a torch zip archive or truncated") from None
        entries = {info.filename: info for info in archive.infolist()}
        pkl = [n for n in entries if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise CorruptFileError(f"{where}: expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        try:
            state = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), where).load()
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptFileError(f"{where}: corrupt pickle ({exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, TensorRef) for v in state.values()):
            raise CorruptFileError(f"{where}: expected a flat state dict of tensors")
        return [_locate(stream, archive, entries, prefix, str(name), ref, where) for name, ref in state.items()]
    finally:
        stream.close()


def _locate(
    stream: ConcatFile,
    archive: zipfile.ZipFile,
    entries: dict[str, zipfile.ZipInfo],
    prefix: str,
    name: str,
    ref: TensorRef,
    where: str,
) -> PthTensor:
    info = entries.get(f"{prefix}data/{ref.storage.key}")
    if info is None:
        raise CorruptFileError(f"{where}: tensor '{name}' refers to missing storage {ref.storage.key}")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CorruptFileError(f"{where}: storage of '{name}' is compressed (expected stored entries)")
    stream.seek(info.header_offset)
    local = stream.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise CorruptFileError(f"{where}: corrupt zip entry for tensor '{name}'")
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    data_start = info.header_offset + 30 + name_len + extra_len
    length = ref.storage.numel * itemsize(ref.storage.code)
    if data_start + length > stream.size or info.file_size != length:
        raise CorruptFileError(
            f"{where}: truncated: tensor '{name}' needs bytes up to {data_start + length}, archive has {stream.size}"
        )
    return PthTensor(name, ref.storage.code, ref.shape, ref, tuple(stream.segments(data_start, length)))

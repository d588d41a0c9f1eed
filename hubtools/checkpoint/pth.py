"""Lazy, safe reading of torch `.pth` zip archives, also when split into byte-concatenated parts.

The pickle is interpreted by a restricted unpickler that accepts only the globals needed to rebuild
tensors (never code), after `pickle_bounds.check_pickle` has bounded its nesting, memo and size (the C
unpickler crashes or allocates gigabytes on crafted input); the zip directory and data.pkl are read
with size bounds (a deflated data.pkl is inflated at most up to the bound), and storages are resolved
to byte ranges inside the stored (uncompressed) zip entries, so tensor bytes can be streamed straight
from disk. The 8x7B torrent's `consolidated.00.pth-split0 ... -splitN` parts are read in place through `ConcatFile`.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import stat
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubtools.checkpoint.pickle_bounds import MAX_PICKLE_BYTES, check_pickle
from hubtools.checkpoint.safetensors_format import itemsize
from hubtools.errors import CorruptFileError, HubtoolsError, UnsafePickleError

Segment = tuple[Path, int, int]  # (file, offset, length)
MAX_DIRECTORY_BYTES = 8 * 1024 * 1024  # zip central directory; ~100 bytes per storage in torch archives
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 48  # any count, offset or stride above this is not a tensor

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
        infos = [p.stat() for p in parts]
        odd = next((p for p, i in zip(parts, infos, strict=True) if not stat.S_ISREG(i.st_mode)), None)
        if odd is not None:  # opening a FIFO would block
            raise CorruptFileError(f"{odd}: not a regular file")
        self.sizes = [i.st_size for i in infos]
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


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_ELEMENTS:
        raise ValueError(f"{what} must be an integer in 0..2^48, got {type(value).__name__}")
    return value


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise ValueError(f"tensor storage is a {type(storage).__name__}, not a storage")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride) or len(size) > MAX_DIMS:
        raise ValueError("tensor size and stride must be tuples of the same length (at most 16)")
    shape = tuple(_count(n, "a size") for n in size)
    strides = tuple(_count(n, "a stride") for n in stride)
    return TensorRef(storage, _count(offset, "a storage offset"), shape, strides)


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
            raise UnsafePickleError(f"{self.where}: unexpected storage type {type(storage_type).__name__}")
        if not isinstance(key, str) or not key.isalnum():
            raise CorruptFileError(f"{self.where}: storage key must be a short name, got {type(key).__name__}")
        return StorageRef(key, storage_type.code, _count(numel, "a storage size"))


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
        archive = _open_archive(stream, where)
        entries = {info.filename: info for info in archive.infolist()}
        pkl = [n for n in entries if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise CorruptFileError(f"{where}: expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        state = _unpickle(_read_bounded(archive, entries[pkl[0]], where), where)
        return [_locate(stream, archive, entries, prefix, name, ref, where) for name, ref in state.items()]
    finally:
        stream.close()


def _open_archive(stream: ConcatFile, where: str) -> zipfile.ZipFile:
    """The zip archive, its central directory bounded before zipfile parses it."""
    try:
        end = zipfile._EndRecData(stream)  # type: ignore[attr-defined]  # the record zipfile itself reads
        if end is None:
            raise zipfile.BadZipFile("no end of central directory")
        _check_extent(stream, end, where)
        if end[zipfile._ECD_SIZE] > MAX_DIRECTORY_BYTES:  # type: ignore[attr-defined]
            raise CorruptFileError(
                f"{where}: zip directory of {end[zipfile._ECD_SIZE]} bytes "  # type: ignore[attr-defined]
                f"(at most {MAX_DIRECTORY_BYTES} accepted)"
            )
        return zipfile.ZipFile(stream)  # type: ignore[arg-type]
    except HubtoolsError:
        raise
    except MemoryError:
        raise
    except Exception:  # zipfile raises BadZipFile, OSError, EOFError, ValueError, struct.error...
        raise CorruptFileError(f"{where}: not a torch zip archive or truncated") from None


def _check_extent(stream: ConcatFile, end: list[Any], where: str) -> None:
    """The archive spans the parts exactly: no bytes before its first entry or after its end record.

    An extra, repeated or foreign split part shows up as one or the other (zipfile itself would accept
    both, reading the archive at a shifted position).
    """
    z: Any = zipfile  # its end-record field indexes are module constants without type stubs
    tail = end[z._ECD_LOCATION] + z.sizeEndCentDir + len(end[z._ECD_COMMENT])
    head = end[z._ECD_LOCATION] - end[z._ECD_SIZE] - end[z._ECD_OFFSET]
    if end[z._ECD_SIGNATURE] == z.stringEndArchive64:
        head -= z.sizeEndCentDir64 + z.sizeEndCentDir64Locator
    if tail < stream.size:
        part = stream.segments(tail, stream.size - tail)[0][0]
        raise CorruptFileError(
            f"{where}: {stream.size - tail} bytes after the end of the zip archive (in {part.name}): "
            "an extra or duplicated part?"
        )
    if head:
        raise CorruptFileError(
            f"{where}: the zip archive does not start at the first byte ({head} bytes unaccounted for): "
            "an extra, repeated or out-of-order part?"
        )


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    """An entry's bytes, inflating at most `MAX_PICKLE_BYTES` + 1 of them (a zip bomb stops there)."""
    if info.file_size > MAX_PICKLE_BYTES:
        raise CorruptFileError(f"{where}: data.pkl is {info.file_size} bytes (at most {MAX_PICKLE_BYTES} accepted)")
    try:
        with archive.open(info) as f:
            data = f.read(MAX_PICKLE_BYTES + 1)
    except MemoryError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, NotImplementedError (method), RuntimeError (encrypted)
        raise CorruptFileError(f"{where}: cannot read data.pkl ({type(exc).__name__})") from None
    if len(data) > MAX_PICKLE_BYTES:
        raise CorruptFileError(f"{where}: data.pkl inflates past {MAX_PICKLE_BYTES} bytes (declared {info.file_size})")
    return data


def _unpickle(data: bytes, where: str) -> dict[str, TensorRef]:
    """The state dict, unpickled by the restricted unpickler once `check_pickle` has bounded it."""
    check_pickle(data, where)
    try:
        state = _RestrictedUnpickler(io.BytesIO(data), where).load()
    except HubtoolsError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # any failure of crafted data inside the unpickler
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CorruptFileError(f"{where}: corrupt pickle ({detail})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, TensorRef) for k, v in state.items()
    ):
        raise CorruptFileError(f"{where}: expected a flat state dict of tensors")
    return state


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
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if math.prod(ref.shape) and last >= ref.storage.numel:
        raise CorruptFileError(
            f"{where}: tensor '{name}' (shape {list(ref.shape)}, stride {list(ref.stride)}, offset {ref.offset}) "
            f"reaches outside its storage of {ref.storage.numel} elements"
        )
    return PthTensor(name, ref.storage.code, ref.shape, ref, tuple(stream.segments(data_start, length)))

"""Checking a GGUF file's layout before anything reads it: magic, header, metadata, tensor infos and data.

gguf-py's reader trusts the file: truncated, it fails with an IndexError or a numpy reshape message that
names neither the file nor the place. `check_gguf_layout` walks the same structure with every read bounded
by the file's size and every field checked as llama.cpp checks it (a known value type, at most 4 dims, a
known tensor type whose row fits its blocks, each tensor's data right after the previous one's, aligned,
within the file, padding included), and ends in one `CorruptFileError` line naming the file and the place:

    m.Q8_0.gguf: truncated: the file ends at byte 200, inside metadata key 4 of 31 (bytes 194 to 211)
    m.Q8_0.gguf: truncated: the file ends at byte 3000000, inside the data of tensor 1 ('token_embd.weight')
        (bytes 2895424 to 5071424)
    m.Q8_0.gguf: corrupt GGUF: tensor 2 ('blk.0.attn_q.weight') has type 99, not a ggml type

The walk reads the metadata (no tensor data) through a memory map: a few milliseconds, plus about a
second per million vocabulary strings.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from hubtools.errors import CorruptFileError

_SCALARS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
ABSURD = 1 << 42  # no string, array or tensor of a GGUF file is 4 TiB: a length above is corrupt, not cut short


class _Walk:
    """A cursor over the file's bytes whose every read names the place it is in when the file ends."""

    def __init__(self, path: Path, data: bytes | mmap.mmap) -> None:
        self.path, self.data, self.size, self.at = path, data, len(data), 0
        self.where = "the magic"

    def corrupt(self, what: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path}: corrupt GGUF: {what}")

    def take(self, n: int) -> int:
        """Advance by `n` bytes; the offset they start at."""
        if n > ABSURD:
            raise self.corrupt(f"{self.where} claims {n} bytes")
        if self.at + n > self.size:
            raise CorruptFileError(
                f"{self.path}: truncated: the file ends at byte {self.size}, inside {self.where} "
                f"(bytes {self.at} to {self.at + n})"
            )
        start, self.at = self.at, self.at + n
        return start

    def scalar(self, fmt: str) -> int | float | bool:
        start = self.take(struct.calcsize("<" + fmt))
        return struct.unpack_from("<" + fmt, self.data, start)[0]  # type: ignore[no-any-return]

    def string(self) -> bytes:
        n = int(self.scalar("Q"))
        start = self.take(n)
        return bytes(self.data[start : start + n])

    def value(self, kind: int, key: str) -> int | float | bool | bytes | None:
        """One metadata value of type `kind` (arrays are walked, not kept: None)."""
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind in _SCALARS:
            return self.scalar(_SCALARS[GGUFValueType(kind)])
        if kind != GGUFValueType.ARRAY:
            raise self.corrupt(f"metadata {show(key)} has value type {kind}, not a GGUF type")
        item, count = int(self.scalar("I")), int(self.scalar("Q"))
        if item in _SCALARS:
            self.take(count * struct.calcsize("<" + _SCALARS[GGUFValueType(item)]))
        elif item == GGUFValueType.STRING:
            if count > ABSURD // 8:
                raise self.corrupt(f"{self.where} claims {count} strings")
            self._strings(count)
        else:  # gguf-py's reader has no nested arrays; llama.cpp refuses them too
            raise self.corrupt(f"metadata {show(key)} is an array of type {item}, not a GGUF scalar or string type")
        return None

    def _strings(self, count: int) -> None:
        """Skip `count` strings (a vocabulary: the one loop over many items, kept tight)."""
        data, size, at, unpack = self.data, self.size, self.at, struct.Struct("<Q").unpack_from
        for _ in range(count):
            if at + 8 > size:
                break
            n = unpack(data, at)[0]
            if n > ABSURD or at + 8 + n > size:
                break
            at += 8 + n
        else:
            self.at = at
            return
        self.at = at  # the string that crosses the end: `take` names the truncation or the absurd length
        self.take(int(self.scalar("Q")))
        raise AssertionError("unreachable: the string above crosses the end of the file")


def show(name: str) -> str:
    """A key or tensor name for a message: quoted, escaped, at most 60 characters (a corrupt file's name
    may be anything, newlines included)."""
    return repr(name[:60] + ("..." if len(name) > 60 else ""))


def _text(raw: bytes, walk: _Walk, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise walk.corrupt(f"{what} is not UTF-8 ({raw[:40]!r})") from None


def check_gguf_layout(path: Path) -> int:
    """Walk the GGUF file `path` (see the module docstring); the number of tensors it holds.

    Raises:
        CorruptFileError: "{path}: truncated: ..." or "{path}: corrupt GGUF: ..." naming the place.
    """
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            raise CorruptFileError(f"{path}: truncated: the file is empty, expected a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _check(_Walk(path, data))


def _check(walk: _Walk) -> int:
    if bytes(walk.data[:4]) != GGUF_MAGIC.to_bytes(4, "little")[: min(4, walk.size)]:
        raise CorruptFileError(f"{walk.path}: expected a GGUF file (magic 'GGUF'), found {bytes(walk.data[:4])!r}")
    walk.take(4)
    walk.where = "the header"
    version, tensor_count, kv_count = walk.scalar("I"), walk.scalar("Q"), walk.scalar("Q")
    if version not in _VERSIONS:
        raise walk.corrupt(f"version {version}, expected {' or '.join(map(str, _VERSIONS))}")
    alignment = GGUF_DEFAULT_ALIGNMENT
    keys: set[str] = set()
    for i in range(int(kv_count)):
        walk.where = f"metadata key {i} of {kv_count}"
        key = _text(walk.string(), walk, f"metadata key {i}")
        if key in keys:
            raise walk.corrupt(f"metadata key {show(key)} appears twice")
        keys.add(key)
        walk.where = f"the value of metadata {show(key)}"
        kind = int(walk.scalar("I"))
        value = walk.value(kind, key)
        if key == "general.alignment":
            if kind != GGUFValueType.UINT32 or not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise walk.corrupt(f"metadata 'general.alignment' is {value!r}, expected a power of two (uint32)")
            alignment = value
    infos = []
    for i in range(int(tensor_count)):
        walk.where = f"tensor info {i} of {tensor_count}"
        name = _text(walk.string(), walk, f"the name of tensor {i}")
        walk.where = f"tensor info {i} ({show(name)})"
        n_dims = int(walk.scalar("I"))
        if not 1 <= n_dims <= MAX_DIMS:
            raise walk.corrupt(f"tensor {i} ({show(name)}) has {n_dims} dims, expected 1 to {MAX_DIMS}")
        dims = [int(walk.scalar("Q")) for _ in range(n_dims)]
        kind, offset = int(walk.scalar("I")), int(walk.scalar("Q"))
        infos.append((name, dims, kind, offset))
    walk.where = "the alignment padding before the tensor data"
    data_start = walk.at + (-walk.at) % alignment
    walk.take(data_start - walk.at)
    expected, names = 0, set()
    for i, (name, dims, kind, offset) in enumerate(infos):
        label = f"tensor {i} ({show(name)})"
        if name in names:
            raise walk.corrupt(f"tensor {show(name)} appears twice")
        names.add(name)
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise walk.corrupt(f"{label} has type {kind}, not a ggml type") from None
        if any(d < 0 for d in dims) or dims[0] % block:
            raise walk.corrupt(f"{label} has shape {dims}, whose rows do not fill {block}-element blocks")
        elements = 1
        for d in dims:
            elements *= d
        nbytes = elements // block * type_size
        if offset != expected:
            raise walk.corrupt(f"{label} starts at data offset {offset}, expected {expected} (after the previous one)")
        expected = offset + nbytes + (-nbytes) % alignment
        walk.where = f"the data of {label}"
        walk.take(nbytes)
        walk.where = f"the alignment padding after {label}"
        walk.take(data_start + expected - walk.at)
    return len(infos)

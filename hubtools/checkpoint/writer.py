"""Streaming safetensors writer: the shard plan and every header are fixed from shapes and dtypes
before any tensor byte is read; bytes are then appended tensor by tensor (or copied file-to-file in
the kernel), so peak memory is one tensor whatever the model size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubtools.checkpoint.pth import Segment
from hubtools.checkpoint.safetensors_format import build_header, nbytes, torch_dtype
from hubtools.errors import DestinationError, MappingError
from hubtools.filenames import shard_name
from hubtools.model.rows import Fusion

if TYPE_CHECKING:
    import torch

COPY_CHUNK = 64 * 1024 * 1024
METADATA = {"format": "pt"}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    code: str  # safetensors dtype code
    shape: tuple[int, ...]
    parts: tuple[str, ...] = ()  # a fused tensor: the planned tensors written back to back to make it

    @property
    def names(self) -> tuple[str, ...]:
        """The planned tensors whose bytes make this one, in order (itself, or its parts)."""
        return self.parts or (self.name,)

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.code)

    @property
    def nbytes(self) -> int:
        return nbytes(self.code, self.shape)


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[PlannedTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(
    tensors: Sequence[PlannedTensor], *, max_shard_size: int, stem: str, single_name: str | None = None
) -> list[Shard]:
    """Split tensors, in order, into shards of at most `max_shard_size` bytes (a bigger tensor gets its own).

    Files are named `{stem}-0000K-of-0000N.safetensors`, or `single_name` when one shard suffices.
    """
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    n = len(groups)
    if n == 1 and single_name:
        return [Shard(single_name, tuple(groups[0]))]
    return [Shard(shard_name(stem, i, n), tuple(g)) for i, g in enumerate(groups, 1)]


def fuse_planned(
    planned: list[PlannedTensor], fusions: tuple[Fusion, ...], source_bytes: Callable[[str], bytes]
) -> list[PlannedTensor]:
    """`planned` with each fusion's parts replaced by one tensor (where its first part was) that lists them.

    Args:
        source_bytes: the source bytes of a planned tensor (an alias must equal its part; read only for aliases).

    Raises:
        MappingError: the parts of a fusion would have different dtypes, or an alias differs from its part.
    """
    by_name = {t.name: t for t in planned}
    fusions = tuple(f for f in fusions if f.parts[0] in by_name)  # scales a dequantizing conversion spends
    first = {f.parts[0]: f for f in fusions}
    inside = {p for f in fusions for p in (*f.parts, *(a for a, _ in f.aliases))}
    out: list[PlannedTensor] = []
    for t in planned:
        fusion = first.get(t.name)
        if fusion is not None:
            codes = sorted({by_name[p].code for p in fusion.parts})
            if len(codes) > 1:
                raise MappingError(f"'{fusion.hf}': its parts have different dtypes {codes}; expected one")
            for alias, part in fusion.aliases:
                if source_bytes(alias) != source_bytes(part):
                    raise MappingError(
                        f"'{alias}' differs from '{part}': '{fusion.hf}' holds one value for both (transformers' "
                        "FP8 experts take one input scale for gate and up); convert with --dtype bfloat16"
                    )
            out.append(PlannedTensor(fusion.hf, t.code, fusion.shape, fusion.parts))
        elif t.name not in inside:
            out.append(t)
    return out


def write_all(fd: int, data: memoryview | bytes, where: Path) -> None:
    view = memoryview(data).cast("B")
    while view:
        try:
            written = os.write(fd, view)
        except OSError as exc:
            raise DestinationError(
                f"{where}: write failed: {exc.strerror or exc} (disk full or file-size limit?)"
            ) from None
        view = view[written:]


def copy_segments(fd: int, segments: Sequence[Segment], where: Path, open_source: Callable[[Path], int]) -> None:
    """Append byte ranges of source files to `fd`, in the kernel where possible (copy_file_range)."""
    for path, offset, length in segments:
        src = open_source(path)
        while length:
            try:
                done = os.copy_file_range(src, fd, min(length, 1 << 30), offset)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # plain copy instead
                    done = len(_pread_write(src, fd, offset, min(length, COPY_CHUNK), where))
                else:
                    raise DestinationError(
                        f"{where}: write failed: {exc.strerror or exc} (disk full or file-size limit?)"
                    ) from None
            if done == 0:
                raise DestinationError(f"{where}: source {path} ended early at byte {offset}")
            offset, length = offset + done, length - done


def _pread_write(src: int, fd: int, offset: int, length: int, where: Path) -> bytes:
    chunk = os.pread(src, length, offset)
    write_all(fd, chunk, where)
    return chunk


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (made contiguous)."""
    import torch

    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


def write_index(path: Path, shards: Sequence[Shard]) -> None:
    """model.safetensors.index.json with total_size and the tensor -> file map (in tensor order)."""
    weight_map = {t.name: s.file for s in shards for t in s.tensors}
    total = sum(s.nbytes for s in shards)
    path.write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, allow_nan=False) + "\n"
    )


def write_shard(path: Path, shard: Shard, fill: Callable[[int, PlannedTensor], None]) -> None:
    """Write one shard: the precomputed header, then `fill(fd, tensor)` for each tensor in order.

    Raises:
        DestinationError: a write failed, or a fill wrote the wrong number of bytes.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        header = build_header([(t.name, t.code, t.shape) for t in shard.tensors], METADATA)
        write_all(fd, header, path)
        expected = len(header)
        for t in shard.tensors:
            fill(fd, t)
            expected += t.nbytes
            position = os.lseek(fd, 0, os.SEEK_CUR)
            if position != expected:
                raise DestinationError(
                    f"{path}: tensor '{t.name}' wrote {position - expected + t.nbytes} bytes, expected {t.nbytes}"
                )
    finally:
        os.close(fd)


class FollowingHash:
    """The sha256 of a file written front to back, computed on `pool`'s thread as its bytes land (`upto(end)`
    after each write), so recording the output needs no second read of it; `result()` -> (path, hex digest,
    bytes hashed). The copies run in the kernel and hashlib releases the GIL: the hash hides behind the writes."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self.path, self.pool, self.done, self.digest = path, pool, 0, hashlib.sha256()
        self.fd: int | None = None
        self.buffer = memoryview(bytearray(8 << 20))

    def upto(self, end: int) -> None:
        self.pool.submit(self._read, end)

    def _read(self, end: int) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        while self.done < end:
            n = os.preadv(self.fd, [self.buffer[: min(len(self.buffer), end - self.done)]], self.done)
            if n <= 0:
                raise DestinationError(f"{self.path}: ended at byte {self.done} while hashing, expected {end}")
            self.digest.update(self.buffer[:n])
            self.done += n

    def result(self) -> Future[tuple[Path, str, int]]:
        def finish() -> tuple[Path, str, int]:
            if self.fd is not None:
                os.close(self.fd)
            return self.path, self.digest.hexdigest(), self.done

        return self.pool.submit(finish)

"""Lazy checkpoint readers: a folder in native or HF layout -> `Checkpoint`, a map from tensor name to
where its bytes are. Nothing is read until asked for; `read()` loads one tensor, `segments` lets a
writer copy bytes straight from disk.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from hubtools.checkpoint.fp8_tensors import check_fp8_tensors
from hubtools.checkpoint.hf_index import index_hf_weights, index_safetensors, json_object
from hubtools.checkpoint.layout import (
    Layout,
    TensorSource,
    WeightFiles,
    WeightFormat,
    detect_layout,
    pth_view_is_exact,
)
from hubtools.checkpoint.pages import map_range
from hubtools.checkpoint.pth import ConcatFile, Segment, read_pth_index
from hubtools.checkpoint.tokenizer_file import find_tokenizer_file
from hubtools.errors import CorruptFileError, LayoutError, MappingError, ParamsError
from hubtools.families import from_hf_config, load_params
from hubtools.filenames import CONFIG, PARAMS
from hubtools.model.family import ModelParams
from hubtools.model.names import NameTable

if TYPE_CHECKING:
    import torch

MAP_AT_LEAST = 1 << 20  # bytes: a tensor this large is mapped, not copied (see hubtools.checkpoint.pages)


def index_pth(files: tuple[Path, ...], stream: ConcatFile | None = None) -> dict[str, TensorSource]:
    """name -> source for the tensors of a .pth archive (its split parts in order), from the pickle alone."""
    tensors: dict[str, TensorSource] = {}
    for t in read_pth_index(list(files), stream=stream):
        exact = pth_view_is_exact(t.ref, t.shape)
        tensors[t.name] = TensorSource(t.name, t.code, t.shape, t.storage_segments, None if exact else t.ref)
    return tensors


class Checkpoint:
    """A lazily indexed checkpoint folder. Use as a context manager; `read(name)` loads one tensor.

    Example:
        >>> with open_checkpoint(Path("model")) as ckpt:  # doctest: +SKIP
        ...     w = ckpt.read(next(iter(ckpt.tensors)))
    """

    def __init__(
        self,
        folder: Path,
        weights: WeightFiles,
        params: ModelParams,
        tensors: dict[str, TensorSource],
        tokenizer_file: Path | None,
    ) -> None:
        self.folder = folder
        self.layout = weights.layout
        self.format = weights.format
        self.files = weights.files
        self.params = params
        self.tensors = tensors
        self.tokenizer_file = tokenizer_file
        self._fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def read_bytes(self, segments: tuple[Segment, ...]) -> np.ndarray:
        """The bytes of `segments`, concatenated, as a uint8 array.

        One segment of at least `MAP_AT_LEAST` bytes is mapped, not copied (`map_bytes`); smaller or split
        ones, and files that cannot be mapped (some network or FUSE file systems), are read with preadv into
        fresh memory.
        """
        if len(segments) == 1 and segments[0][2] >= MAP_AT_LEAST:
            with contextlib.suppress(OSError):  # ENODEV, EACCES...: fall back to reading
                return self.map_bytes(*segments[0])
        buf = np.empty(sum(n for _, _, n in segments), dtype=np.uint8)
        view, done = buf.data, 0
        for path, offset, length in segments:
            while length:
                got = os.preadv(self.fd(path), [view[done : done + length]], offset)
                if got == 0:
                    raise CorruptFileError(f"{path}: truncated while reading (offset {offset})")
                done, offset, length = done + got, offset + got, length - got
        return buf

    def map_bytes(self, path: Path, offset: int, length: int) -> np.ndarray:
        """`length` bytes of `path` from `offset`, mapped from the page cache (`pages.map_range`)."""
        return map_range(self.fd(path), path, offset, length)

    def prefetch(self, name: str) -> None:
        """Start reading `name`'s bytes into the page cache in the background (a hint: returns at once), so
        that a cold read of it later overlaps whatever runs in between."""
        src = self.tensors.get(name)
        for path, offset, length in src.segments if src is not None else ():
            os.posix_fadvise(self.fd(path), offset, length, os.POSIX_FADV_WILLNEED)

    def read(self, name: str) -> torch.Tensor:
        """Load one tensor in its stored dtype and shape (writable; large ones map the file, see `map_bytes`)."""
        src = self.tensors[name]
        return self.tensor_from(src, self.read_bytes(src.segments))

    @staticmethod
    def tensor_from(src: TensorSource, raw: np.ndarray) -> torch.Tensor:
        """The tensor `src` from its bytes `raw` (as `read_bytes` returns them), without a copy when contiguous."""
        import torch

        flat = torch.from_numpy(raw).view(src.dtype)
        if src.view is None:
            return flat.reshape(src.shape)
        return flat.as_strided(src.view.shape, src.view.stride, src.view.offset).clone()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def open_checkpoint(
    folder: str | os.PathLike[str], *, layout: Layout | str | None = None, prefer: Layout | str | None = None
) -> Checkpoint:
    """Index a native or HF checkpoint folder (headers only); nothing is read until asked for.

    Args:
        folder: the checkpoint folder.
        layout: read only this layout ("native" or "hf"); a folder holding both is then fine.
        prefer: the layout to read when the folder holds both and `layout` is None.

    Returns:
        A `Checkpoint`; use it as a context manager to close its files.

    Raises:
        LayoutError, ParamsError, CorruptFileError, UnsafePickleError, MappingError.

    Example:
        >>> with open_checkpoint("mixtral-8x7b") as ckpt:  # doctest: +SKIP
        ...     ckpt.params.architecture, len(ckpt.tensors)
        ('MixtralForCausalLM', 995)
    """
    folder = Path(folder)
    weights = detect_layout(folder, layout=layout, prefer=prefer)
    if weights.layout is Layout.NATIVE:
        params = load_params(folder / PARAMS)
        pth = weights.format in (WeightFormat.PTH, WeightFormat.PTH_SPLIT)
        tensors = index_pth(weights.files) if pth else index_safetensors(weights.files)[1]
    else:
        config_path = folder / CONFIG
        if not config_path.is_file():
            raise LayoutError(f"{folder}: expected config.json beside the HF weights, found none")
        params = from_hf_config(json_object(config_path), source=str(config_path))
        params = params.family.with_hf_side_files(params, folder)
        tensors = split_fusions(params, index_hf_weights(folder, weights.files), where=str(folder))
    return Checkpoint(folder, weights, params, tensors, find_tokenizer_file(folder))


def split_fusions(params: ModelParams, tensors: dict[str, TensorSource], *, where: str) -> dict[str, TensorSource]:
    """An HF checkpoint's fused tensors (`Family.fusions`) replaced by their parts, each a byte range of the
    stored tensor (no byte is read): everything downstream sees one tensor per row of the name table.

    Raises:
        MappingError: a fused tensor stored split (its parts under their own names).
        ParamsError: a fused tensor whose shape is not what params imply.
    """
    fusions = params.family.fusions(params)
    if not fusions:
        return tensors
    out = dict(tensors)
    for fusion in fusions:
        stray = next((p for p in (*fusion.parts, *(a for a, _ in fusion.aliases)) if p in tensors), None)
        if stray is not None:
            raise MappingError(f"{where}: tensor '{stray}' is stored on its own; expected it inside '{fusion.hf}'")
        src = out.pop(fusion.hf, None)
        if src is None:
            continue  # the table's completeness check names the missing parts
        if src.shape != fusion.shape or src.view is not None:
            raise ParamsError(
                f"{where}: tensor '{fusion.hf}' has shape {list(src.shape)}, config.json implies {list(fusion.shape)}"
            )
        step = src.nbytes // len(fusion.parts)
        for i, part in enumerate(fusion.parts):
            out[part] = TensorSource(part, src.code, fusion.part_shape, _byte_range(src.segments, i * step, step))
        for alias, part in fusion.aliases:
            out[alias] = TensorSource(alias, src.code, fusion.part_shape, out[part].segments)
    return out


def _byte_range(segments: tuple[Segment, ...], start: int, length: int) -> tuple[Segment, ...]:
    """The segments holding bytes `start .. start + length` of the concatenation of `segments`."""
    out: list[Segment] = []
    for path, offset, size in segments:
        if start >= size:
            start -= size
            continue
        take = min(size - start, length)
        out.append((path, offset + start, take))
        length, start = length - take, 0
        if not length:
            break
    return tuple(out)


def check_tensors(ckpt: Checkpoint, table: NameTable) -> None:
    """Names complete and unique, shapes as params imply.

    Raises:
        MappingError: unknown or missing tensors.  ParamsError: a shape that params contradict.
    """
    where = str(ckpt.folder)
    check_fp8_tensors(ckpt.tensors, ckpt.params, table, ckpt.layout, where)
    table.check_complete(ckpt.tensors, layout=ckpt.layout, where=where)
    p = ckpt.params
    for name, src in ckpt.tensors.items():
        spec = table.spec(name, layout=ckpt.layout)
        if src.shape != spec.shape:
            origin = Layout.parse(ckpt.layout).metadata_file
            raise ParamsError(
                f"{where}: tensor '{name}' has shape {list(src.shape)}, {origin} implies "
                f"{list(spec.shape)} (dim={p.dim}, n_heads={p.n_heads}, n_kv_heads={p.n_kv_heads}, "
                f"head_dim={p.head_dim}, hidden_dim={p.hidden_dim}, vocab_size={p.vocab_size})"
            )

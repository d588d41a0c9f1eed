"""Lazy checkpoint readers: a folder in native or HF layout -> `Checkpoint`, a map from tensor name to
where its bytes are. Nothing is read until asked for; `read()` loads one tensor, `segments` lets a
writer copy bytes straight from disk.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from hubtools.checkpoint.pth import ConcatFile, Segment, TensorRef, read_pth_index
from hubtools.checkpoint.safetensors_format import nbytes, read_header, torch_dtype
from hubtools.errors import CorruptFileError, LayoutError, MappingError
from hubtools.model.hf_config import from_hf_config
from hubtools.model.params import ModelParams, load_params

if TYPE_CHECKING:
    import torch

NATIVE_SHARD = re.compile(r"consolidated-(\d{5})-of-(\d{5})\.safetensors")
PTH_SPLIT = re.compile(r"(consolidated\.\d+\.pth)-split(\d+)")


@dataclass(frozen=True)
class TensorSource:
    """One stored tensor. `segments` are its exact bytes when `view` is None; otherwise they hold the
    whole storage and `view` says how the tensor sits in it (a strided .pth view)."""

    name: str
    code: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]
    view: TensorRef | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.code)

    @property
    def nbytes(self) -> int:
        return nbytes(self.code, self.shape)


@dataclass(frozen=True)
class WeightFiles:
    layout: str  # "native" | "hf"
    fmt: str  # safetensors | pth | pth-split
    files: tuple[Path, ...]


def detect_weights(folder: Path, *, layout: str | None = None) -> WeightFiles:
    """Find the weight files of a checkpoint folder and say which layout they are.

    Args:
        layout: "native" or "hf" to pick one when a folder holds both.

    Raises:
        LayoutError: no weights, an ambiguous folder, or missing shards.
    """
    if not folder.is_dir():
        raise LayoutError(f"{folder}: not a folder")
    return classify_weights(folder, sorted(p.name for p in folder.iterdir()), layout=layout)


def classify_weights(folder: Path, names: list[str], *, layout: str | None = None) -> WeightFiles:
    """`detect_weights` on a listing: `names` are the files of `folder` (which may be remote)."""
    native_st = [n for n in names if n == "consolidated.safetensors" or NATIVE_SHARD.fullmatch(n)]
    pth = [n for n in names if re.fullmatch(r"consolidated\.\d+\.pth", n)]
    splits = [n for n in names if PTH_SPLIT.fullmatch(n)]
    hf = [n for n in names if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", n)]
    found = {"native": bool(native_st or pth or splits), "hf": bool(hf)}
    if layout is None and all(found.values()):
        raise LayoutError(
            f"{folder}: holds both native (consolidated.*) and HF (model*.safetensors) weights; "
            "say which to read (--to hf reads the native ones)"
        )
    chosen = layout or ("native" if found["native"] else "hf" if found["hf"] else None)
    if chosen is None or not found[chosen]:
        bins = [n for n in names if n.endswith(".bin")]
        hint = " (.bin weights are not supported: convert them to safetensors first)" if bins else ""
        raise LayoutError(
            f"{folder}: no {chosen or 'native or HF'} weights found (expected consolidated*.safetensors, "
            f"consolidated.00.pth[-splitN] or model*.safetensors){hint}"
        )
    if chosen == "hf":
        return WeightFiles("hf", "safetensors", tuple(folder / n for n in hf))
    kinds = [k for k, v in (("safetensors", native_st), ("pth", pth), ("pth-split", splits)) if v]
    if len(kinds) > 1:
        raise LayoutError(
            f"{folder}: ambiguous native checkpoint, holds {' and '.join(kinds)} weights "
            "(expected one format; remove the others)"
        )
    if kinds[0] == "safetensors":
        return WeightFiles("native", "safetensors", tuple(folder / n for n in _check_shards(folder, native_st)))
    if kinds[0] == "pth":
        if len(pth) > 1:
            raise LayoutError(f"{folder}: {len(pth)} .pth files (tensor-parallel checkpoints are not supported)")
        return WeightFiles("native", "pth", (folder / pth[0],))
    return WeightFiles("native", "pth-split", tuple(folder / n for n in _check_splits(folder, splits)))


def _check_shards(folder: Path, names: list[str]) -> list[str]:
    if names == ["consolidated.safetensors"]:
        return names
    if "consolidated.safetensors" in names:
        raise LayoutError(f"{folder}: holds consolidated.safetensors and consolidated-N-of-M shards (ambiguous)")
    total = int(NATIVE_SHARD.fullmatch(names[0]).group(2))  # type: ignore[union-attr]
    expected = [f"consolidated-{i:05d}-of-{total:05d}.safetensors" for i in range(1, total + 1)]
    missing = [n for n in expected if n not in names]
    if missing or len(names) != total:
        raise LayoutError(
            f"{folder}: incomplete shards: missing {missing[0] if missing else 'none'} "
            f"(expected {total} files, found {len(names)})"
        )
    return expected


def _check_splits(folder: Path, names: list[str]) -> list[str]:
    ordered = sorted(names, key=lambda n: int(PTH_SPLIT.fullmatch(n).group(2)))  # type: ignore[union-attr]
    stems = {PTH_SPLIT.fullmatch(n).group(1) for n in names}  # type: ignore[union-attr]
    numbers = [int(PTH_SPLIT.fullmatch(n).group(2)) for n in ordered]  # type: ignore[union-attr]
    if len(stems) > 1 or numbers != list(range(len(numbers))):
        gap = next((i for i, n in enumerate(numbers) if n != i), len(numbers))
        raise LayoutError(
            f"{folder}: split parts are not a sequence -split0..-split{len(numbers) - 1}: missing -split{gap}"
        )
    return ordered


def _index_safetensors(
    files: tuple[Path, ...], open_stream: Callable[[Path], tuple[BinaryIO, int]] | None = None
) -> dict[str, TensorSource]:
    tensors: dict[str, TensorSource] = {}
    for path in files:
        stream, size = open_stream(path) if open_stream else (None, None)
        entries, _ = read_header(path, stream=stream, size=size)
        for e in entries:
            if e.name in tensors:
                other = tensors[e.name].segments[0][0].name
                raise MappingError(f"{path}: duplicate tensor '{e.name}' (also in {other})")
            tensors[e.name] = TensorSource(e.name, e.code, e.shape, ((path, e.offset, e.length),))
    return tensors


def _index_pth(files: tuple[Path, ...], stream: ConcatFile | None = None) -> dict[str, TensorSource]:
    tensors: dict[str, TensorSource] = {}
    for t in read_pth_index(list(files), stream=stream):
        exact = t.ref.contiguous and t.ref.offset == 0 and t.ref.storage.numel == math.prod(t.shape)
        tensors[t.name] = TensorSource(t.name, t.code, t.shape, t.storage_segments, None if exact else t.ref)
    return tensors


def _check_index(folder: Path, files: tuple[Path, ...], tensors: dict[str, TensorSource]) -> None:
    index_path = folder / "model.safetensors.index.json"
    if not index_path.is_file():
        if len(files) > 1:
            raise LayoutError(f"{folder}: {len(files)} model shards but no model.safetensors.index.json")
        return
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CorruptFileError(f"{index_path}: not a valid index (expected a JSON object with 'weight_map')") from None
    names = {p.name for p in files}
    for name, file in weight_map.items():
        if file not in names:
            raise LayoutError(f"{index_path}: tensor '{name}' is mapped to '{file}', which is missing")
        source = tensors.get(name)
        if source is None or source.segments[0][0].name != file:
            raise MappingError(
                f"{index_path}: tensor '{name}' is mapped to '{file}' but "
                + (f"stored in '{source.segments[0][0].name}'" if source else "no shard holds it")
            )
    extra = sorted(set(tensors) - set(weight_map))
    if extra:
        raise MappingError(f"{index_path}: tensor '{extra[0]}' is in a shard but not in the index")


class Checkpoint:
    """A lazily indexed checkpoint folder. Use as a context manager; `read(name)` loads one tensor.

    Example:
        >>> with open_checkpoint(Path("model")) as ckpt:  # doctest: +SKIP
        ...     w = ckpt.read("tok_embeddings.weight")
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
        self.format = weights.fmt
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
        """The bytes of `segments`, concatenated, as a uint8 array (no zero-fill before the read)."""
        buf = np.empty(sum(n for _, _, n in segments), dtype=np.uint8)
        view, done = buf.data, 0
        for path, offset, length in segments:
            while length:
                got = os.preadv(self.fd(path), [view[done : done + length]], offset)
                if got == 0:
                    raise CorruptFileError(f"{path}: truncated while reading (offset {offset})")
                done, offset, length = done + got, offset + got, length - got
        return buf

    def read(self, name: str) -> torch.Tensor:
        """Load one tensor (owning its memory) in its stored dtype and shape."""
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


def open_checkpoint(folder: Path, *, layout: str | None = None) -> Checkpoint:
    """Index a native or HF checkpoint folder (headers only).

    Raises:
        LayoutError, ParamsError, CorruptFileError, UnsafePickleError, MappingError.
    """
    from hubtools.tokenization.files import find_native_tokenizer

    weights = detect_weights(folder, layout=layout)
    if weights.layout == "native":
        params = load_params(folder / "params.json")
        tensors = _index_pth(weights.files) if weights.fmt.startswith("pth") else _index_safetensors(weights.files)
    else:
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise LayoutError(f"{folder}: HF weights without config.json")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{config_path}: not valid JSON ({exc})") from None
        params = from_hf_config(config, source=str(config_path))
        tensors = _index_safetensors(weights.files)
        _check_index(folder, weights.files, tensors)
    return Checkpoint(folder, weights, params, tensors, find_native_tokenizer(folder))

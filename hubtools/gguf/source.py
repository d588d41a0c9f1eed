"""The source of a GGUF export or check: a native or HF checkpoint, its GGUF tensor plan, the config
llama.cpp's converter would read, and each GGUF tensor's float rows in native (interleaved q/k) order.

Tensors are read one source tensor at a time and decoded to float32 in chunks of rows, so memory stays
at one source tensor plus one chunk whatever the model's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubtools.checkpoint.reader import Checkpoint, check_tensors, open_checkpoint
from hubtools.checkpoint.safetensors_format import dtype_name
from hubtools.errors import CorruptFileError, LayoutError, ParamsError, TokenizerError
from hubtools.filenames import CONFIG, DEFAULT_SHARD_SIZE
from hubtools.gguf.names import GgufTensor, converter_order, gguf_tensors, hf_shards_of_native
from hubtools.model import fp8
from hubtools.model.hf_config import ConfigOverrides, to_hf_config
from hubtools.model.names import NameTable, TensorSpec
from hubtools.model.transforms import to_native
from hubtools.tokenization.files import check_tokenizer_vocab

CHUNK_BYTES = 64 * 2**20  # float32 bytes decoded and quantized at a time


@dataclass(frozen=True)
class GgufSource:
    """An opened checkpoint and everything derived from it for GGUF."""

    ckpt: Checkpoint
    config: dict[str, Any]
    tensors: tuple[GgufTensor, ...]

    @property
    def params(self) -> Any:
        return self.ckpt.params

    @property
    def tokenizer(self) -> Path:
        if self.ckpt.tokenizer_file is None:
            raise TokenizerError(
                f"{self.ckpt.folder}: no native tokenizer "
                "(expected tokenizer.model[.vN] or tekken.json beside the weights)"
            )
        return self.ckpt.tokenizer_file


def _open(folder: Path) -> Checkpoint:
    try:
        return open_checkpoint(folder)
    except LayoutError as exc:
        if "holds both" not in str(exc):
            raise
        return open_checkpoint(folder, layout="native")


def _hf_shards(ckpt: Checkpoint) -> list[list[str]]:
    by_file: dict[Path, list[str]] = {f: [] for f in ckpt.files}
    for name, src in ckpt.tensors.items():
        by_file[src.segments[0][0]].append(name)
    return [by_file[f] for f in sorted(by_file, key=lambda p: p.name)]


def open_source(folder: Path, *, overrides: ConfigOverrides | None = None) -> GgufSource:
    """Open a native or HF checkpoint folder for GGUF (headers only; a folder with both reads native).

    Raises:
        LayoutError, ParamsError, MappingError, TokenizerError, CorruptFileError: as `convert` does.
    """
    ckpt = _open(folder)
    try:
        if (why := ckpt.params.family.gguf_unsupported) is not None:
            raise ParamsError(f"{folder}: a {ckpt.params.architecture} cannot be exported to GGUF ({why})")
        if ckpt.params.family.wraps_text:
            raise ParamsError(
                f"{folder}: a vision model ({ckpt.params.architecture}); hubtools gguf exports text models only "
                "(llama.cpp's converter writes these as a text GGUF plus a vision projector with --mmproj, which "
                "hubtools does not write yet: use convert_hf_to_gguf.py on the converted folder)"
            )
        table = NameTable(ckpt.params)
        check_tensors(ckpt, table)
        check_tokenizer_vocab(ckpt)
        if ckpt.layout == "native":
            codes = {name: src.code for name, src in ckpt.tensors.items()}
            first = ckpt.tensors[table.specs[0].native].code
            config = to_hf_config(ckpt.params, dtype=dtype_name(first), overrides=overrides).config
            shards = hf_shards_of_native(ckpt.params, codes, DEFAULT_SHARD_SIZE)
        else:
            config = json.loads((folder / CONFIG).read_text())
            shards = _hf_shards(ckpt)
        plan = gguf_tensors(ckpt.params, converter_order(shards))
    except BaseException:
        ckpt.close()
        raise
    return GgufSource(ckpt, config, tuple(plan))


def _decode(raw: np.ndarray, code: str, where: str) -> np.ndarray:
    if code == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if code == "F16":
        return raw.view(np.float16).astype(np.float32)
    if code == "F32":
        return raw.view(np.float32)
    raise CorruptFileError(f"{where}: dtype {code} cannot be exported to GGUF (expected BF16, F16 or F32)")


def raw_rows(source: GgufSource, spec: TensorSpec) -> tuple[np.ndarray, str]:
    """[rows, row bytes] of one source tensor in native row order, and its dtype code."""
    ckpt = source.ckpt
    name = spec.native if ckpt.layout == "native" else spec.hf
    src = ckpt.tensors[name]
    if src.view is None:
        raw = ckpt.read_bytes(src.segments).reshape(spec.shape[0], -1)
    else:
        import torch

        raw = ckpt.read(name).contiguous().view(-1).view(torch.uint8).numpy().reshape(spec.shape[0], -1)
    if ckpt.layout == "hf" and spec.transform != "identity":
        raw = np.ascontiguousarray(to_native(spec.transform, raw, ckpt.params))
    return raw, src.code


def dequantized_rows(source: GgufSource, spec: TensorSpec) -> tuple[np.ndarray, str]:
    """An FP8 weight as float32 rows in native row order: `weight.float() * scale.float()`, as llama.cpp's
    converter dequantizes `weight_scale_inv` / `qscale_weight` (`dequant_simple`) before writing any type."""
    import torch

    ckpt, layout = source.ckpt, source.ckpt.layout.value
    weight = ckpt.read(spec.native if layout == "native" else spec.hf)
    rows = fp8.dequantize(weight, ckpt.read(fp8.weight_scale(ckpt.params, spec, layout)), torch.float32).numpy()
    if layout == "hf" and spec.transform != "identity":
        rows = np.ascontiguousarray(to_native(spec.transform, rows, ckpt.params))
    return rows.view(np.uint8).reshape(spec.shape[0], -1), "F32"


def source_rows(source: GgufSource, spec: TensorSpec) -> tuple[np.ndarray, str]:
    """`raw_rows`, or for an FP8 weight `dequantized_rows`."""
    return dequantized_rows(source, spec) if fp8.is_quantized(source.params, spec) else raw_rows(source, spec)


def float_rows(source: GgufSource, tensor: GgufTensor) -> Iterator[tuple[np.ndarray, int]]:
    """(float32 rows, source bytes they came from) in chunks, expert by expert for merged experts; FP8
    weights dequantized first (`source_rows`)."""
    for spec in tensor.sources:
        raw, code = source_rows(source, spec)
        cols = spec.shape[1] if len(spec.shape) == 2 else 1
        step = max(1, CHUNK_BYTES // (4 * cols))
        for start in range(0, raw.shape[0], step):
            chunk = np.ascontiguousarray(raw[start : start + step])
            rows = _decode(chunk, code, f"{source.ckpt.folder}: tensor '{spec.native}'").reshape(chunk.shape[0], -1)
            yield rows, chunk.nbytes

"""The source of a GGUF export or check: a native or HF checkpoint, its GGUF tensor plan, the config
llama.cpp's converter would read, and each GGUF tensor's float rows in native (interleaved q/k) order.

A vision model (a wrapper: Pixtral, Mistral3) gives two sources, as llama.cpp's converter writes two files:
its text model (`open_source`: the text tensors only, the config with `text_config` merged over the wrapper's,
as the converter's `TextModel` reads it) and its vision projector (`projector_source`: the encoder and
projector tensors, for `--mmproj`, `hubtools.gguf.mmproj`).

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
from hubtools.gguf.names import GgufTensor, converter_order, gguf_tensors, hf_shards_of_native, stored_names
from hubtools.model import fp8, vision
from hubtools.model.hf_config import ConfigOverrides, to_hf_config
from hubtools.model.names import NameTable, TensorSpec
from hubtools.model.rows import Part
from hubtools.model.transforms import to_native
from hubtools.tokenization.files import check_tokenizer_vocab

CHUNK_BYTES = 64 * 2**20  # float32 bytes decoded and quantized at a time
PROJECTOR_ARCHITECTURE = "clip"  # llama.cpp's MODEL_ARCH.MMPROJ
VISION_PARTS = (Part.VISION, Part.PROJECTOR)


@dataclass(frozen=True)
class GgufSource:
    """An opened checkpoint and everything derived from it for GGUF."""

    ckpt: Checkpoint
    config: dict[str, Any]  # what the converter's text model reads (a wrapper's text_config merged over it)
    tensors: tuple[GgufTensor, ...]
    wrapper_config: dict[str, Any] | None = None  # a vision model's whole config.json (the projector reads it)
    projector: bool = False  # the vision projector (mmproj) rather than the text model

    @property
    def params(self) -> Any:
        return self.ckpt.params

    @property
    def architecture(self) -> str:
        """The file's `general.architecture`: llama.cpp's `clip` for a projector, else the family's."""
        return PROJECTOR_ARCHITECTURE if self.projector else self.params.family.gguf_text_architecture(self.params)

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
    """Stored tensor names per file (fused tensors whole, `stored_names`), files in name order."""
    by_file: dict[Path, list[str]] = {f: [] for f in ckpt.files}
    for name, src in ckpt.tensors.items():
        by_file[src.segments[0][0]].append(name)
    return [stored_names(ckpt.params, by_file[f]) for f in sorted(by_file, key=lambda p: p.name)]


def _refuse_unsupported(folder: Path, params: Any) -> None:
    """The converter's limits (and hubtools'), one line naming the architecture."""
    if (why := params.family.gguf_unsupported) is not None:
        raise ParamsError(f"{folder}: a {params.architecture} cannot be exported to GGUF ({why})")
    text = params.text
    if text is not params and text.family.gguf_unsupported is not None:  # its reason speaks of the text model alone
        raise ParamsError(
            f"{folder}: a {params.architecture} around a {text.architecture} cannot be exported to GGUF (hubtools "
            f"has no GGUF writer for a {text.architecture}, llama.cpp's `{text.family.gguf_architecture}`; try "
            "llama.cpp's convert_hf_to_gguf.py, and its --mmproj, on the folder `hubtools convert` writes)"
        )


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config the converter's text model reads: a wrapper's `text_config` moved to the root level."""
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def open_source(folder: Path, *, overrides: ConfigOverrides | None = None) -> GgufSource:
    """Open a native or HF checkpoint folder for GGUF (headers only; a folder with both reads native): its
    text model (a vision model's text model alone; `projector_source` gives its projector).

    Raises:
        LayoutError, ParamsError, MappingError, TokenizerError, CorruptFileError: as `convert` does.
    """
    ckpt = _open(folder)
    try:
        _refuse_unsupported(folder, ckpt.params)
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
        wrapped = ckpt.params.family.wraps_text
        plan = gguf_tensors(ckpt.params, converter_order(shards), parts=None if not wrapped else _text_parts())
    except BaseException:
        ckpt.close()
        raise
    return GgufSource(ckpt, text_config(config), tuple(plan), wrapper_config=config if wrapped else None)


def _text_parts() -> tuple[Part, ...]:
    return tuple(p for p in Part if p not in VISION_PARTS)


def projector_source(source: GgufSource) -> GgufSource:
    """The vision projector (llama.cpp's mmproj) of a vision model's `open_source`: the encoder and projector
    tensors in the converter's order, on the same open checkpoint.

    Raises:
        ParamsError: the model has no vision encoder.
    """
    if source.wrapper_config is None:
        raise ParamsError(
            f"{source.ckpt.folder}: a {source.params.architecture} has no vision encoder; a projector (mmproj) "
            "is written for vision models only (LlavaForConditionalGeneration, Mistral3ForConditionalGeneration)"
        )
    ckpt = source.ckpt
    if ckpt.layout == "native":
        codes = {name: src.code for name, src in ckpt.tensors.items()}
        shards = hf_shards_of_native(ckpt.params, codes, DEFAULT_SHARD_SIZE)
    else:
        shards = _hf_shards(ckpt)
    plan = gguf_tensors(ckpt.params, converter_order(shards), parts=VISION_PARTS)
    return GgufSource(
        ckpt, source.config, (*_token_rows(ckpt), *plan), wrapper_config=source.wrapper_config, projector=True
    )


def _token_rows(ckpt: Checkpoint) -> list[GgufTensor]:
    """The text-embedding rows a projector carries (`gguf_token_rows`), first: where the converter's sorted
    reading meets the embedding (`language_model.model.embed_tokens` sorts before the projector and the tower).

    Raises:
        ParamsError: the token's id is unknown.
    """
    params = ckpt.params
    row = params.family.embedding_rows(params)[0]
    embedding = next(s for s in NameTable(params).specs if s.row == row)
    out = []
    for name, token in vision.gguf_token_rows(params.option("vision")):
        if token is None:
            raise ParamsError(
                f"{ckpt.folder}: no [IMG_BREAK] token id (params.json vision_encoder.image_break_token_id, or "
                f"tokenizer.json's added tokens); llama.cpp's projector needs its embedding ('{name}')"
            )
        if not 0 <= token < embedding.shape[0]:
            raise ParamsError(
                f"{ckpt.folder}: token id {token} for '{name}' is outside the vocabulary ({embedding.shape[0]})"
            )
        out.append(GgufTensor(name, (embedding,), embedding.shape[1:], row=token))
    return out


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
    if tensor.piece is not None:
        yield _piece_rows(source, tensor)
        return
    for spec in tensor.sources:
        raw, code = source_rows(source, spec)
        if tensor.row is not None:
            raw = raw[tensor.row : tensor.row + 1]
        cols = spec.shape[1] if len(spec.shape) == 2 else 1
        step = max(1, CHUNK_BYTES // (4 * cols))
        for start in range(0, raw.shape[0], step):
            chunk = np.ascontiguousarray(raw[start : start + step])
            rows = _decode(chunk, code, f"{source.ckpt.folder}: tensor '{spec.native}'").reshape(chunk.shape[0], -1)
            yield rows, chunk.nbytes


def _piece_rows(source: GgufSource, tensor: GgufTensor) -> tuple[np.ndarray, int]:
    """A piece of one source tensor (`Family.gguf_cut`), whole (MLA's kv_b: a few MiB), and half its bytes."""
    (spec,) = tensor.sources
    raw, code = source_rows(source, spec)
    whole = _decode(raw.reshape(-1), code, f"{source.ckpt.folder}: tensor '{spec.native}'").reshape(spec.shape)
    params = source.params
    piece = np.ascontiguousarray(params.family.gguf_cut(params, tensor.piece, whole), dtype=np.float32)
    return piece.reshape(-1, tensor.shape[-1]), raw.nbytes // len(params.family.gguf_pieces(params, spec))

"""export(): a checkpoint folder -> `DST/<name>.<QUANT>.gguf` files, streaming, atomic.

Each file is written with gguf-py's `GGUFWriter`: every tensor info first (sizes known from shapes and
types), then the metadata, then the tensor data one tensor at a time, each quantized in chunks of rows
(`write_tensor_data` with a streaming tensor), so peak memory is one source tensor plus one chunk.
Files go to a temporary folder inside DST and are renamed into place at the end, recorded in DST's
`.hubtools` (`hubtools.destination`); an existing output file needs `force`, which replaces only the files
of the same name and quant (and their split parts), and only those hubtools recorded there, unchanged.

A vision model (Pixtral, Mistral3) gives its text model's files, and with `mmproj` its vision projector too:
`DST/mmproj-<name>.<TYPE>.gguf`, as llama.cpp's converter writes them (`--mmproj`) for its multimodal tools.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gguf
import numpy as np

from hubtools.destination import atomic_files, check_destination, check_outside, check_parent, recover_files
from hubtools.errors import DestinationError, QuantizeError
from hubtools.filenames import MMPROJ_PREFIX, TOKENIZER_JSON, gguf_files, gguf_name
from hubtools.gguf.metadata import add_general, add_model_parameters
from hubtools.gguf.mmproj import add_projector_parameters
from hubtools.gguf.names import GgufTensor
from hubtools.gguf.quant import (
    QuantType,
    find_llama_quantize,
    llama_quantize,
    parse_quants,
    quantize,
    tensor_type,
    type_nbytes,
)
from hubtools.gguf.source import GgufSource, float_rows, open_source, projector_source
from hubtools.gguf.vocab import add_vocab, hf_tokenizer_dir
from hubtools.model.hf_config import ConfigOverrides
from hubtools.tokenization.choices import ChatTemplate
from hubtools.validation import file_stem, split_size

Progress = Callable[[int], None]
MMPROJ_TYPES = ("F32", "F16", "BF16", "Q8_0")  # the converter's --outtype choices for a projector


class _StreamedTensor:
    """What `GGUFWriter.write_tensor_data` needs (nbytes, tofile), quantizing chunk by chunk."""

    def __init__(
        self, source: GgufSource, tensor: GgufTensor, qtype: gguf.GGMLQuantizationType, progress: Progress | None
    ):
        self.source, self.tensor, self.qtype, self.progress = source, tensor, qtype, progress
        self.nbytes = type_nbytes(tensor.shape, qtype)

    def tofile(self, fout: IO[bytes]) -> None:
        for rows, consumed in float_rows(self.source, self.tensor):
            data = quantize(rows, self.qtype)
            fout.write(np.ascontiguousarray(data).tobytes())
            if self.progress:
                self.progress(consumed)


def tensor_types(
    tensors: Sequence[GgufTensor], quant: QuantType, *, projector: bool = False
) -> list[gguf.GGMLQuantizationType]:
    """The type of each tensor in a file of this (gguf-py) quant (a vision projector's, with `projector`)."""
    return [tensor_type(t.name, t.shape, quant.weight_type, projector=projector) for t in tensors]


def write_gguf(
    source: GgufSource,
    path: Path,
    quant: QuantType,
    *,
    name: str,
    tokenizer_dir: Path,
    split_max_size: int = 0,
    progress: Progress | None = None,
) -> list[Path]:
    """Write one GGUF file (or its split parts) of a gguf-py quant type; returns the paths written."""
    writer = gguf.GGUFWriter(path=None, arch=source.architecture, split_max_size=split_max_size)
    types = tensor_types(source.tensors, quant, projector=source.projector)
    for t, qtype in zip(source.tensors, types, strict=True):
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), type_nbytes(t.shape, qtype), raw_dtype=qtype)
    if source.projector:
        add_general(writer, name=name, kind=gguf.GGUFType.MMPROJ)
        add_projector_parameters(writer, source, quant.file_type)
    else:
        add_general(writer, name=name)
        add_model_parameters(writer, source.config, quant.file_type)
        add_vocab(writer, source.tokenizer, tokenizer_dir, source.config["vocab_size"])
    files = writer.format_shard_names(path)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        for t, qtype in zip(source.tensors, types, strict=True):
            writer.write_tensor_data(_StreamedTensor(source, t, qtype, progress))  # type: ignore[arg-type]
    finally:
        writer.close()
    return list(files)


@dataclass(frozen=True)
class GgufFile:
    quant: str
    files: tuple[str, ...]
    bytes: int


@dataclass(frozen=True)
class GgufResult:
    """What `export` did, for the summary line and `--json`."""

    source: str
    destination: str
    architecture: str
    outputs: tuple[GgufFile, ...]
    seconds: float
    mmproj: GgufFile | None = None  # a vision model's projector, when asked for

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "destination": self.destination,
            "architecture": self.architecture,
            "outputs": [_file_dict(o) for o in self.outputs],
            "seconds": self.seconds,
        }
        if self.mmproj is not None:
            out["mmproj"] = _file_dict(self.mmproj)
        return out


def _file_dict(out: GgufFile) -> dict[str, Any]:
    return {"quant": out.quant, "files": list(out.files), "bytes": out.bytes}


def _existing(dst: Path, name: str, quants: Sequence[QuantType], mmproj: QuantType | None) -> list[Path]:
    if not dst.is_dir():
        return []
    patterns = [gguf_files(name, q.name) for q in quants]
    if mmproj is not None:
        patterns.append(gguf_files(MMPROJ_PREFIX + name, mmproj.name))
    return sorted(p for p in dst.iterdir() if any(pat.fullmatch(p.name) for pat in patterns))


def intermediate_type(source: GgufSource) -> QuantType:
    """What llama-quantize starts from: BF16 for a bfloat16 checkpoint (lossless), else F16."""
    return QuantType("BF16" if source.ckpt.tensors[next(iter(source.ckpt.tensors))].code == "BF16" else "F16")


def _write_quant(
    source: GgufSource,
    tmp: Path,
    quant: QuantType,
    *,
    name: str,
    tokenizer_dir: Path,
    split: int,
    progress: Progress | None,
) -> list[Path]:
    path = tmp / gguf_name(name, quant.name)
    if quant.builtin:
        return write_gguf(
            source, path, quant, name=name, tokenizer_dir=tokenizer_dir, split_max_size=split, progress=progress
        )
    base = intermediate_type(source)
    stage = tmp / "intermediate"
    stage.mkdir(exist_ok=True)
    parts = write_gguf(
        source, stage / path.name, base, name=name, tokenizer_dir=tokenizer_dir, split_max_size=split, progress=progress
    )
    # with --keep-split, llama-quantize takes an output prefix and appends -0000k-of-0000n.gguf itself
    keep = len(parts) > 1
    llama_quantize(parts[0], path.with_suffix("") if keep else path, quant, keep_split=keep)
    shutil.rmtree(stage)
    return sorted(p for p in tmp.iterdir() if gguf_files(name, quant.name).fullmatch(p.name))


def export(
    src: Path,
    dst: Path,
    *,
    quants: str | Sequence[str | QuantType],
    name: str | None = None,
    chat_template: str | None = None,
    overrides: ConfigOverrides | None = None,
    split_max_size: int | str = 0,
    force: bool = False,
    progress: Progress | None = None,
    mmproj: str | QuantType | None = None,
) -> GgufResult:
    """Export a native or HF checkpoint folder to GGUF files `DST/<name>.<QUANT>.gguf`.

    Args:
        quants: output types: `QuantType`s, names or 'f16,q8_0' (`parse_quants`; none at all is an error);
            K-quants need `llama-quantize` on PATH.
        name: file stem (default: SRC's folder name).
        chat_template: "auto", "mistral", "chatml" or "none" (default: the HF source's own template, or
            "auto" for a native source).
        split_max_size: split files above this size, e.g. "50GB" or a byte count (llama.cpp's -0000k-of-0000n
            convention); 0: never.
        force: replace existing output files of the same names and quants that hubtools wrote, unchanged
            (anything else at those names is refused; nothing else in DST is touched).
        mmproj: also write a vision model's projector, `DST/mmproj-<name>.<TYPE>.gguf`, in this type (f32,
            f16, bf16 or q8_0: the converter's); a text model is refused.

    Returns:
        A `GgufResult`. On any failure nothing new is left in DST.

    Raises:
        HubtoolsError subclasses naming the file or tensor at fault.

    Example:
        >>> export(Path("mixtral"), Path("gguf"), quants=parse_quants("f16,q8_0"))  # doctest: +SKIP
    """
    started = time.monotonic()
    src, dst = Path(src), Path(dst)
    quants, name, split_max_size = check_export_inputs(src, quants=quants, name=name, split_max_size=split_max_size)
    projector_type = parse_mmproj(mmproj) if mmproj is not None else None
    if chat_template is not None:
        chat_template = ChatTemplate.parse(chat_template).value
    check_outside(dst, sources=(src,))
    check_parent(dst)
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"{dst}: expected a folder for the GGUF files, found a file (it is not replaced)")
    if dst.is_dir():
        recover_files(dst, name)  # a run killed mid-swap: the old files come back first
    existing = _existing(dst, name, quants, projector_type)
    if existing and not force:
        raise DestinationError(f"{existing[0]}: already exists (use --force to replace it)")
    for path in existing:  # only hubtools' unchanged files, before any work
        check_destination(path, force=True)
    source = open_source(src, overrides=overrides)
    try:
        projector = projector_source(source) if projector_type is not None else None
    except BaseException:
        source.ckpt.close()
        raise
    created = not dst.exists()
    dst.mkdir(exist_ok=True)
    outputs = []
    written: GgufFile | None = None
    try:
        with atomic_files(dst, name, replaces=existing, force=force) as out, source.ckpt:
            hf_dir = _tokenizer_dir(source, src, chat_template, out.tmp)
            for quant in quants:
                files = _write_quant(
                    source, out.tmp, quant, name=name, tokenizer_dir=hf_dir, split=split_max_size, progress=progress
                )
                outputs.append(GgufFile(quant.name, tuple(p.name for p in files), sum(p.stat().st_size for p in files)))
                out.names.extend(p.name for p in files)
            if projector is not None and projector_type is not None:
                files = write_gguf(
                    projector, out.tmp / gguf_name(MMPROJ_PREFIX + name, projector_type.name), projector_type,
                    name=name, tokenizer_dir=hf_dir, progress=progress,
                )  # fmt: skip
                sizes = sum(p.stat().st_size for p in files)
                written = GgufFile(projector_type.name, tuple(p.name for p in files), sizes)
                out.names.extend(written.files)
    finally:
        if created and not any(dst.iterdir()):
            dst.rmdir()
    return GgufResult(
        str(src),
        str(dst),
        source.params.architecture,
        tuple(outputs),
        round(time.monotonic() - started, 3),
        written,
    )


def parse_mmproj(value: str | QuantType) -> QuantType:
    """A projector's type: one of the converter's (f32, f16, bf16, q8_0).

    Raises:
        QuantizeError: another type, or several.
    """
    shown = value.name if isinstance(value, QuantType) else value
    found = parse_quants([value] if isinstance(value, QuantType) else value)
    if len(found) != 1 or found[0].name not in MMPROJ_TYPES:
        raise QuantizeError(
            f"mmproj type '{shown}': expected one of {', '.join(t.lower() for t in MMPROJ_TYPES)} "
            "(the types llama.cpp's converter writes a projector in)"
        )
    return found[0]


def check_export_inputs(
    src: Path, *, quants: str | Sequence[str | QuantType], name: str | None, split_max_size: int | str = 0
) -> tuple[list[QuantType], str, int]:
    """`export`'s checks of its values (the CLI calls it before any work too): the quant types, the file
    stem, the split size, and llama-quantize for K-quants.

    Returns:
        The quant types, the file stem (default: SRC's folder name) and the split size in bytes.

    Raises:
        QuantizeError: an unknown quant type, none at all, or llama-quantize missing for a K-quant.
        DestinationError: a name that is not a file stem. InvalidValueError: a malformed split size.
    """
    checked = parse_quants(quants)
    stem = file_stem(name if name is not None else Path(src).resolve().name)
    split = split_size(split_max_size)
    if any(not q.builtin for q in checked):
        find_llama_quantize()
    return checked, stem, split


def _tokenizer_dir(source: GgufSource, src: Path, chat_template: str | None, tmp: Path) -> Path:
    """The HF tokenizer files SpecialVocab reads: the HF source's own, or those `convert` would write."""
    if source.ckpt.layout == "hf" and chat_template is None and (src / TOKENIZER_JSON).is_file():
        return src
    return hf_tokenizer_dir(source.tokenizer, source.config, chat_template=chat_template or "auto", workdir=tmp)

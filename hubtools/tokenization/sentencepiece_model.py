"""Read a SentencePiece `tokenizer.model` (a `sentencepiece.ModelProto`) without protobuf.

Only what the Hugging Face conversion needs: the pieces (text, score, type), the normalizer flags and
the trainer flags that change encoding. Field numbers are those of `sentencepiece_model.proto`;
absent fields take the proto defaults (note `remove_extra_whitespaces` defaults to true).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hubtools.checkpoint.file_limits import read_tokenizer_bytes
from hubtools.errors import TokenizerError

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL = 2
MAX_PIECES = 1 << 22  # Mistral's are 32000 / 32768
_ID_FIELDS = (("unk_id", 40, 0), ("bos_id", 41, 1), ("eos_id", 42, 2), ("pad_id", 43, -1))  # TrainerSpec


@dataclass(frozen=True)
class Piece:
    """One vocabulary entry: its text, score and `SentencePiece.Type`."""

    piece: str
    score: float
    type: int


@dataclass(frozen=True)
class SentencePieceModel:
    """The parts of a `ModelProto` that decide how text becomes ids.

    Example:
        >>> m = read_sentencepiece_model(Path("tokenizer.model"))  # doctest: +SKIP
        >>> m.pieces[1].piece, m.add_dummy_prefix  # doctest: +SKIP
        ('<s>', True)
    """

    pieces: tuple[Piece, ...]
    model_type: int = 1
    byte_fallback: bool = False
    normalizer_name: str = "nmt_nfkc"
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    treat_whitespace_as_suffix: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1

    def ids_of(self, *types: int) -> list[int]:
        """Ids of the pieces whose type is one of `types`, in id order."""
        return [i for i, p in enumerate(self.pieces) if p.type in types]


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field of one message; varints as int, the rest as bytes."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            yield number, value
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield number, data[i : i + size]
            i += size
        elif wire == 2:
            size, i = _varint(data, i)
            yield number, data[i : i + size]
            i += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(data):
            raise ValueError("truncated message")


def _signed(value: int | bytes) -> int:
    """An int32 varint as Python int (negative values are encoded as 64-bit two's complement)."""
    number = int(value) if isinstance(value, int) else 0
    return number - (1 << 64) if number >= 1 << 63 else number


def _piece(data: bytes) -> Piece:
    text, score, kind = "", 0.0, NORMAL
    for number, value in _fields(data):
        if number == 1 and isinstance(value, bytes):
            text = value.decode("utf-8")
        elif number == 2 and isinstance(value, bytes):
            score = struct.unpack("<f", value)[0]
        elif number == 3 and isinstance(value, int):
            kind = value
    return Piece(text, score, kind)


def parse_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Parse serialized `ModelProto` bytes. Raises `ValueError`/`UnicodeDecodeError` on garbage."""
    pieces: list[Piece] = []
    trainer: dict[int, int | bytes] = {}
    normalizer: dict[int, int | bytes] = {}
    for number, value in _fields(data):
        if number == 1 and isinstance(value, bytes):
            if len(pieces) >= MAX_PIECES:
                raise ValueError(f"more than {MAX_PIECES} pieces")
            pieces.append(_piece(value))
        elif number == 2 and isinstance(value, bytes):
            trainer = dict(_fields(value))
        elif number == 3 and isinstance(value, bytes):
            normalizer = dict(_fields(value))
    if not pieces:
        raise ValueError("no pieces")
    name = normalizer.get(1, b"nmt_nfkc")
    charsmap = normalizer.get(2, b"")
    ids = {key: _signed(trainer.get(field, default)) for key, field, default in _ID_FIELDS}
    for key, value in ids.items():
        if not (-1 if key == "pad_id" else 0) <= value < len(pieces):
            raise ValueError(f"{key} {value} is outside the {len(pieces)} pieces")
    return SentencePieceModel(
        pieces=tuple(pieces),
        model_type=_signed(trainer.get(3, 1)),
        byte_fallback=bool(trainer.get(35, 0)),
        normalizer_name=name.decode() if isinstance(name, bytes) else str(name),
        precompiled_charsmap=charsmap if isinstance(charsmap, bytes) else b"",
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
        escape_whitespaces=bool(normalizer.get(5, 1)),
        treat_whitespace_as_suffix=bool(trainer.get(24, 0)),
        **ids,
    )


@functools.lru_cache(maxsize=4)
def _parse_cached(data: bytes) -> SentencePieceModel:
    """Parsing is pure: one conversion checks, versions and converts the same file, so parse it once."""
    return parse_sentencepiece_model(data)


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    """Read a SentencePiece model file.

    Args:
        path (`Path`): a `tokenizer.model` / `tokenizer.model.vN` file.

    Returns:
        `SentencePieceModel`: pieces and encoding flags.

    Raises:
        `TokenizerError`: the file is missing, not a regular file, too large (`file_limits`), or is not
            a SentencePiece model (including unk/bos/eos/pad ids outside the vocabulary).
    """
    data = read_tokenizer_bytes(path)
    try:
        return _parse_cached(data)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise TokenizerError(
            f"not a SentencePiece model: '{path}' (expected a serialized ModelProto, got {exc})"
        ) from exc

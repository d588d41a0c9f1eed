"""Tokenizer metadata of a GGUF file, as llama.cpp's converter writes it for hubtools' HF conversion.

- SentencePiece (v1, v3, v7; `tokenizer.model*`): model `llama`, pre-tokenizer `default`, every piece
  with its real score and type (`_create_vocab_sentencepiece`: UNKNOWN, CONTROL, UNUSED, BYTE, else
  NORMAL; USER_DEFINED pieces read as NORMAL, as sentencepiece reports them), padded to the config's
  vocabulary size with `[PADn]` UNUSED pieces.
- tekken: model `gpt2` (byte-level BPE), pre-tokenizer `tekken`, the byte-level token strings of
  `tokenizer.json`, special tokens CONTROL (`get_vocab_base`), merges from `tokenizer.json`.
- Then gguf-py's own `SpecialVocab` on the HF tokenizer files: bos/eos/unk/pad ids, add_bos/add_eos,
  the chat template of the HF conversion.

The pieces are read with hubtools' own SentencePiece parser (no protobuf/sentencepiece needed).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
from tokenizers import Tokenizer

from hubtools.filenames import CONFIG, TOKENIZER_JSON
from hubtools.tokenization.files import tokenizer_version, write_hf_tokenizer
from hubtools.tokenization.sentencepiece_model import BYTE, CONTROL, UNKNOWN, UNUSED, read_sentencepiece_model

T = gguf.TokenType
_SPM_TYPES = {UNKNOWN: T.UNKNOWN, CONTROL: T.CONTROL, UNUSED: T.UNUSED, BYTE: T.BYTE}


def spm_vocab(native: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """(tokens, scores, types) of a SentencePiece model, padded or cut to `vocab_size`."""
    pieces = read_sentencepiece_model(native).pieces[:vocab_size]
    tokens = [p.piece.encode("utf-8") for p in pieces]
    scores = [p.score for p in pieces]
    types = [int(_SPM_TYPES.get(p.type, T.NORMAL)) for p in pieces]
    for i in range(1, vocab_size - len(pieces) + 1):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(T.UNUSED))
    return tokens, scores, types


def _looks_special(token: str) -> bool:
    return token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))


def bpe_vocab(tokenizer_json: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens, types) of a byte-level BPE `tokenizer.json` (tekken's HF conversion), as the converter reads it."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    reverse = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    added = tok.get_added_tokens_decoder()
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(T.UNUSED))
        elif i in added:
            special = added[i].special or _looks_special(reverse[i])
            tokens.append(reverse[i] if special else reverse[i].replace("\u2581", " "))
            types.append(int(T.CONTROL if special else T.USER_DEFINED))
        else:
            tokens.append(reverse[i])
            types.append(int(T.NORMAL))
    return tokens, types


def add_vocab(writer: gguf.GGUFWriter, native: Path, hf_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer keys for `native`, with special tokens and template from the HF files in `hf_dir`."""
    if tokenizer_version(native) != "tekken":
        tokens, scores, types = spm_vocab(native, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        with _quiet_special_vocab():
            gguf.SpecialVocab(hf_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
        return
    bpe_tokens, types = bpe_vocab(hf_dir / TOKENIZER_JSON, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("tekken")
    writer.add_token_list(bpe_tokens)
    writer.add_token_types(types)
    with _quiet_special_vocab():
        gguf.SpecialVocab(hf_dir, load_merges=True).add_to_gguf(writer, quiet=True)


@contextmanager
def _quiet_special_vocab() -> Iterator[None]:
    """SpecialVocab warns "Unknown separator token '<s>' in TemplateProcessing<pair>" on the standard
    Llama pair template (<s> A <s> B) of hubtools' tokenizer.json; it only decides add_sep_token (false,
    as the converter writes), so the warning is noise for this export."""
    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def hf_tokenizer_dir(native: Path, config: dict[str, Any], *, chat_template: str, workdir: Path) -> Path:
    """Write the HF tokenizer files `hubtools convert` would write (and config.json) into a fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix="tokenizer-", dir=workdir))
    write_hf_tokenizer(native, folder, chat_template=chat_template, images="vision_config" in config)  # as convert
    (folder / CONFIG).write_text(json.dumps(config))
    return folder

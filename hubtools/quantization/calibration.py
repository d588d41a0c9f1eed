"""The calibration tokens: the user's JSONL (`--calibration`) or the set shipped with the package, encoded
by the model's own tokenizer (mistral-common: texts with BOS, conversations in the model's chat template),
cut to `seq_len`, at most `samples` of them, packed into chunks the engine runs one at a time.

File format (`hubtools.tokenization.parity.load_prompts`): one JSON value a line, a string or
`{"text": ...}` (a text) or `{"messages": [...]}` / a list of `{role, content}` (a conversation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hubtools.errors import InvalidValueError, QuantizeError, TokenizerError
from hubtools.quantization.engine import Chunk

CHUNK_TOKENS = 512  # tokens per forward chunk at least (a longer sequence is its own): attention is chunk^2


def _peer_rows(folder: Path, path: Path | None, samples: int, seq_len: int) -> tuple[list[list[int]], str] | None:
    """Rows from the calibration sets shipped with the package (`hubtools.tokenization.calibration`), when
    this installation has that module; None otherwise."""
    try:
        from hubtools.tokenization import calibration as shipped  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return None
    try:
        sets = shipped.load_calibration(path) if path is not None else shipped.builtin_calibration()
        rows = shipped.calibration_rows(sets, shipped.SampleEncoder.for_folder(folder), count=samples, seq_len=seq_len)
    except (InvalidValueError, TokenizerError) as exc:
        raise QuantizeError(str(exc)) from None
    where = str(path) if path is not None else "the calibration set shipped with hubtools"
    return rows, where


def _builtin_prompts() -> list[Any]:
    from hubtools.tokenization.corpus import BUILTIN_CONVERSATIONS, BUILTIN_TEXTS

    return [*BUILTIN_TEXTS, *([dict(m) for m in c] for c in BUILTIN_CONVERSATIONS)]


def _encoder(tokenizer_file: Path) -> Any:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(tokenizer_file))


def _encode(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.instruct_tokenizer.tokenizer.encode(prompt, bos=True, eos=False))
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request = prompt if isinstance(prompt, dict) else {"messages": prompt}
    return list(tokenizer.encode_chat_completion(ChatCompletionRequest(**request)).tokens)


def _own_rows(tokenizer_file: Path, path: Path | None, samples: int, seq_len: int) -> tuple[list[list[int]], str]:
    """Rows from `path` (one a line), or from the built-in tokenizer corpus joined into rows of `seq_len`."""
    from hubtools.tokenization.parity import load_prompts

    try:
        prompts = load_prompts(path) if path is not None else _builtin_prompts()
    except TokenizerError as exc:
        raise QuantizeError(str(exc)) from None
    tokenizer = _encoder(tokenizer_file)
    encoded = []
    for number, prompt in enumerate(prompts, 1):
        try:
            encoded.append(_encode(tokenizer, prompt))
        except Exception as exc:  # mistral-common raises many types for a conversation it refuses
            if path is None:
                continue  # the built-in corpus holds edge cases the reference refuses on purpose
            raise QuantizeError(
                f"{path}: line {number}: the tokenizer refuses it ({type(exc).__name__}: {exc})"
            ) from None
    if path is not None:
        return [ids[:seq_len] for ids in encoded if ids][:samples], str(path)
    stream = [t for ids in encoded for t in ids]  # short texts: joined, then cut into full rows
    return [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)][:samples], "the built-in corpus"


def calibration_sequences(
    folder: Path, tokenizer_file: Path | None, vocab_size: int, path: Path | None, *, samples: int, seq_len: int
) -> tuple[list[list[int]], str]:
    """Token id sequences for calibration and a line saying where they came from.

    Raises:
        QuantizeError: the file cannot be read, holds no usable line, or a line the tokenizer refuses.
    """
    if tokenizer_file is None and path is None:
        generator = torch.Generator().manual_seed(0)
        rows = [torch.randint(0, vocab_size, (seq_len,), generator=generator).tolist() for _ in range(samples)]
        return rows, f"{samples} random sequences (no tokenizer file in the source)"
    found = _peer_rows(folder, path, samples, seq_len)
    if found is None:
        if tokenizer_file is None:
            raise QuantizeError(f"{folder}: --calibration needs the model's tokenizer, found no tokenizer file")
        found = _own_rows(tokenizer_file, path, samples, seq_len)
    rows, where = found
    rows = [r for r in rows if r]
    if not rows:
        raise QuantizeError(f"{path or folder}: expected at least one calibration text or conversation, found none")
    if max(max(r) for r in rows) >= vocab_size:
        raise QuantizeError(
            f"{path or folder}: token ids reach {max(max(r) for r in rows)}, the model has {vocab_size}"
        )
    return rows, f"{len(rows)} sequences, {sum(map(len, rows))} tokens, from {where}"


def pack(rows: list[list[int]], *, device: torch.device, chunk_tokens: int = CHUNK_TOKENS) -> list[Chunk]:
    """Sequences packed back to back into chunks of at most `chunk_tokens` (a longer sequence is its own)."""
    chunks: list[Chunk] = []
    batch: list[list[int]] = []
    for row in [*rows, []]:
        if batch and (not row or sum(map(len, batch)) + len(row) > chunk_tokens):
            tokens = torch.tensor([t for r in batch for t in r], device=device)[None]
            positions = torch.cat([torch.arange(len(r)) for r in batch]).to(device)
            chunks.append(Chunk(tokens, positions))
            batch = []
        if row:
            batch.append(row)
    return chunks

"""The calibration tokens: the user's JSONL (`--calibration`) or the set shipped with the package, encoded
by the model's own tokenizer (mistral-common: texts with BOS, conversations in the model's chat template),
cut to `seq_len`, at most `samples` of them, packed into chunks the engine runs one at a time.

File format (`hubtools.tokenization.parity.load_prompts`): one JSON value a line, a string or
`{"text": ...}` (a text) or `{"messages": [...]}` / a list of `{role, content}` (a conversation).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from hubtools.errors import QuantizeError, TokenizerError
from hubtools.quantization.engine import Chunk

CHUNK_TOKENS = 2048  # tokens per forward chunk: its attention mask is CHUNK_TOKENS^2 floats
DEFAULT_SET = "calibration.jsonl"  # in hubtools/quantization/data/


def default_calibration() -> Path | None:
    """The calibration set shipped with the package, if this installation has it."""
    found = resources.files("hubtools.quantization").joinpath("data", DEFAULT_SET)
    return Path(str(found)) if found.is_file() else None


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


def calibration_sequences(
    tokenizer_file: Path | None, vocab_size: int, path: Path | None, *, samples: int, seq_len: int, seed: int = 0
) -> tuple[list[list[int]], str]:
    """Token id sequences for calibration and a line saying where they came from.

    Raises:
        QuantizeError: the file cannot be read, holds no usable line, or a line the tokenizer refuses.
    """
    from hubtools.tokenization.parity import load_prompts

    if tokenizer_file is None:
        generator = torch.Generator().manual_seed(seed)
        rows = [torch.randint(0, vocab_size, (seq_len,), generator=generator).tolist() for _ in range(samples)]
        return rows, f"{samples} random sequences (no tokenizer file in the source)"
    shipped = default_calibration()
    source = path or shipped
    try:
        prompts = load_prompts(source) if source is not None else _builtin_prompts()
    except TokenizerError as exc:
        raise QuantizeError(str(exc)) from None
    tokenizer = _encoder(tokenizer_file)
    rows = []
    for number, prompt in enumerate(prompts[:samples], 1):
        try:
            ids = _encode(tokenizer, prompt)
        except Exception as exc:  # mistral-common raises many types for a conversation it refuses
            raise QuantizeError(f"{source}: line {number}: the tokenizer refuses it ({type(exc).__name__}: {exc})") from None
        if ids:
            rows.append(ids[:seq_len])
    if not rows:
        raise QuantizeError(f"{source}: expected at least one text or conversation, found none")
    if max(max(r) for r in rows) >= vocab_size:
        raise QuantizeError(f"{tokenizer_file}: token ids reach {max(max(r) for r in rows)}, the model has {vocab_size}")
    where = str(path) if path else (f"the shipped set ({DEFAULT_SET})" if shipped else "the built-in corpus")
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

"""Build a `tokenizers.Tokenizer` (what `tokenizer.json` holds) that encodes exactly like mistral-common.

SentencePiece (v1-v7 `tokenizer.model*`), mirroring `sentencepiece`'s BPE encoder:

- normalizer `Prepend("▁")` + `Replace(" ", "▁")`: the dummy prefix is added to every piece of text
  between special tokens, as mistral-common encodes every chunk of a chat separately;
- model: BPE with byte fallback over the proto's pieces. A merge `(a, b)` exists for every split of
  every NORMAL piece into two NORMAL pieces, ranked by the piece's score (SentencePiece merges by the
  score of the result). Equal scores (Mistral's whitespace runs share -1e9) are ranked longest piece
  first, which reproduces SentencePiece's leftmost-first rule on runs of spaces;
- USER_DEFINED pieces (`[REF]`, `[REFERENCE_DOC_n]` in v3/v7) are matched in the text as SentencePiece
  does: isolated by a `Split` pre-tokenizer and looked up whole (`ignore_merges`); vocabulary entries
  that BPE cannot build (control, byte, unknown pieces) are split at their first BPE boundary so that
  whole-word lookup never returns them for ordinary text.

Tekken (`tekken*.json`), mirroring tiktoken: the file's regex as an isolating `Split`, byte-level BPE
whose merges are every split of every token ranked by the token's rank, whole-word lookup first
(`ignore_merges`, as tiktoken does), and ids offset by the special tokens that occupy the first ids.

Special (control) tokens are added as special tokens: `tok(text, split_special_tokens=True)` encodes
their text as mistral-common does; by default Hugging Face parses them (see `hubtools.tokenization.files`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from hubtools.errors import TokenizerError
from hubtools.tokenization.sentencepiece_model import BPE_MODEL, CONTROL, NORMAL, USER_DEFINED, SentencePieceModel

SPACE = "▁"


@dataclass(frozen=True)
class SpecialTokens:
    """The names of the special tokens a tokenizer_config.json declares (pad is None when absent)."""

    bos: str
    eos: str
    unk: str
    pad: str | None = None


def _check_supported(model: SentencePieceModel, source: str) -> None:
    problems = []
    if model.model_type != BPE_MODEL:
        problems.append(f"model_type={model.model_type} (expected 2, BPE)")
    if model.precompiled_charsmap or model.normalizer_name not in ("identity", ""):
        problems.append(f"normalizer '{model.normalizer_name}' (expected 'identity')")
    if model.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces=true (expected false)")
    if not model.escape_whitespaces or model.treat_whitespace_as_suffix:
        problems.append("whitespace escaping other than a '▁' prefix")
    if not model.byte_fallback:
        problems.append("byte_fallback=false (expected true)")
    if problems:
        raise TokenizerError(
            f"unsupported SentencePiece model: '{source}' ({'; '.join(problems)}). "
            "hubtools converts BPE models with byte fallback as Mistral ships them."
        )


def _spm_merges(model: SentencePieceModel) -> list[tuple[str, str]]:
    normal = {p.piece for p in model.pieces if p.type == NORMAL}
    ranked = []
    for i, p in enumerate(model.pieces):
        if p.type != NORMAL or len(p.piece) < 2:
            continue
        key = (-p.score, -len(p.piece), i)
        for k in range(1, len(p.piece)):
            left, right = p.piece[:k], p.piece[k:]
            if left in normal and right in normal:
                ranked.append((key, k, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _first_boundary_split(bpe: Any, words: list[str]) -> list[Any]:
    """Split pre-tokenizers that cut each vocabulary word BPE cannot build at its first BPE boundary.

    With `ignore_merges`, a word that is a vocabulary key is returned whole; for these words that
    would differ from BPE, so they are cut where BPE cuts them (the parts then encode independently).
    One pass per level of nesting (a remainder can itself be such a word).
    """
    cuts: dict[str, str] = {}
    for word in words:
        pieces = [t.value for t in bpe.tokenize(word)]
        if pieces != [word]:
            cuts[word] = pieces[0]
    if not cuts:
        return []

    def depth(word: str) -> int:
        rest = word[len(cuts[word]) :]
        return 1 + depth(rest) if rest in cuts else 1

    alternatives = "|".join(f"{re.escape(first)}(?={re.escape(word[len(first) :])}\\z)" for word, first in cuts.items())
    split = pre_tokenizers.Split(Regex(f"\\A(?:{alternatives})"), behavior="isolated")
    return [split] * max(depth(w) for w in cuts)


def spm_tokenizer(model: SentencePieceModel, *, source: str) -> tuple[Tokenizer, SpecialTokens]:
    """A `Tokenizer` equivalent to SentencePiece (as mistral-common calls it) for `model`.

    Args:
        model (`SentencePieceModel`): the parsed `tokenizer.model`.
        source (`str`): the file name, for error messages.

    Returns:
        `(Tokenizer, SpecialTokens)`: the tokenizer (adds BOS) and its special token names.

    Raises:
        `TokenizerError`: the model uses SentencePiece options this converter does not reproduce.
    """
    _check_supported(model, source)
    vocab = {p.piece: i for i, p in enumerate(model.pieces)}
    if len(vocab) != len(model.pieces):
        raise TokenizerError(f"{source}: expected unique pieces in a SentencePiece model, found duplicates")
    names = SpecialTokens(
        bos=model.pieces[model.bos_id].piece,
        eos=model.pieces[model.eos_id].piece,
        unk=model.pieces[model.unk_id].piece,
        pad=model.pieces[model.pad_id].piece if model.pad_id >= 0 else None,
    )
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=_spm_merges(model), unk_token=names.unk, byte_fallback=True, fuse_unk=True)
    )
    steps = [normalizers.Prepend(SPACE)] if model.add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    user = sorted((p.piece for p in model.pieces if p.type == USER_DEFINED), key=len, reverse=True)
    if user:
        matched = pre_tokenizers.Split(Regex("|".join(re.escape(u) for u in user)), behavior="isolated")
        words = [p.piece for p in model.pieces if p.type != USER_DEFINED]
        tok.pre_tokenizer = pre_tokenizers.Sequence([matched, *_first_boundary_split(tok.model, words)])
        tok.model.ignore_merges = True
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = [p.piece for i, p in enumerate(model.pieces) if p.type == CONTROL or i == model.unk_id]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    _add_bos(tok, names.bos, model.bos_id)
    return tok, names


def _add_bos(tok: Tokenizer, bos: str, bos_id: int) -> None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def tekken_specials(data: dict[str, Any], default: list[str]) -> list[str]:
    """The special token strings by id: the file's list (or `default`), padded with `<SPECIAL_{id}>`."""
    count = int(data["config"]["default_num_special_tokens"])
    listed = data.get("special_tokens")
    names = [t["token_str"] for t in sorted(listed, key=lambda t: t["rank"])] if listed else list(default)
    return names + [f"<SPECIAL_{i}>" for i in range(len(names), count)]


def tekken_tokenizer(
    data: dict[str, Any], *, default_specials: list[str], source: str
) -> tuple[Tokenizer, SpecialTokens]:
    """A `Tokenizer` equivalent to mistral-common's Tekkenizer for a parsed `tekken.json`.

    Args:
        data (`dict`): the parsed tekken.json.
        default_specials (`list[str]`): special tokens for files that list none (mistral-common's).
        source (`str`): the file name, for error messages.

    Returns:
        `(Tokenizer, SpecialTokens)`: the tokenizer (adds BOS) and its special token names.

    Raises:
        `TokenizerError`: the file lacks fields or its vocabulary is malformed.
    """
    try:
        config = data["config"]
        specials = tekken_specials(data, default_specials)
        inner = int(config["default_vocab_size"]) - len(specials)
        tokens = [base64.b64decode(v["token_bytes"]) for v in data["vocab"][:inner]]
        pattern = str(config["pattern"])
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise TokenizerError(f"{source}: expected a tekken tokenizer, found a missing or bad field ({exc})") from exc
    if len(tokens) != inner or any(tokens[i] != bytes([i]) for i in range(min(256, inner))):
        raise TokenizerError(
            f"{source}: expected a tekken tokenizer of {inner} tokens, the first 256 being the single bytes, "
            f"found {len(tokens)}"
        )
    try:
        return _tekken_from_tokens(tokens, specials, pattern)
    except MemoryError:
        raise
    except Exception as exc:  # tokenizers raises plain Exception (e.g. an invalid regex pattern)
        raise TokenizerError(f"{source}: expected a tekken tokenizer, found {str(exc)[:200]}") from None


def _tekken_from_tokens(tokens: list[bytes], specials: list[str], pattern: str) -> tuple[Tokenizer, SpecialTokens]:
    to_char = _bytes_to_unicode()
    text = ["".join(to_char[b] for b in t) for t in tokens]
    rank = {t: i for i, t in enumerate(tokens)}
    vocab = {s: i for i, s in enumerate(specials)} | {s: i + len(specials) for i, s in enumerate(text)}
    ranked = [
        (r, k, text[rank[t[:k]]], text[rank[t[k:]]])
        for r, t in enumerate(tokens)
        for k in range(1, len(t))
        if t[:k] in rank and t[k:] in rank
    ]
    ranked.sort()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    names = SpecialTokens(bos="<s>", eos="</s>", unk="<unk>", pad="<pad>" if "<pad>" in specials else None)
    if names.bos not in specials or names.eos not in specials:
        raise ValueError("no '<s>' or '</s>' special token")
    _add_bos(tok, names.bos, specials.index(names.bos))
    return tok, names

"""Native Mistral tokenizers <-> Hugging Face tokenizer files.

`write_hf_tokenizer` turns `tokenizer.model` (v1), `tokenizer.model.vN` (SentencePiece) or `tekken*.json`
into `tokenizer.json` + `tokenizer_config.json` + `special_tokens_map.json`, loadable by
`transformers.AutoTokenizer` as a plain fast tokenizer (no mistral-common at load time), and copies the
native file unchanged beside them; `restore_native_tokenizer` copies it back.

Behaviour of the Hugging Face tokenizer (measured by `hubtools.tokenization.parity`):

- `tok(text)` adds BOS and gives the ids of mistral-common's `encode(text, bos=True, eos=False)`, for
  every text that contains no special-token string;
- special-token strings in text ("<s>", "[INST]", ...): mistral-common never parses them (they are
  ordinary pieces); Hugging Face parses them by default, which the chat template relies on. Pass
  `split_special_tokens=True` to encode such text exactly as mistral-common does;
- `tok.apply_chat_template(messages, add_generation_prompt=True)` gives mistral-common's
  `encode_chat_completion` tokens (see `hubtools.tokenization.chat_template`).

Decisions:

- Which file is the native tokenizer of a folder: `tekken*.json`, `*.model.vN[mM]`, `*.model`. Several
  such files are fine when their bytes are identical (Mistral repos ship `tokenizer.model` and
  `tokenizer.model.v3` as copies); the most specific name wins (tekken, then the highest version, then
  the unversioned name). Files whose contents differ are ambiguous: `LayoutError`.
- Version: from the file name as mistral-common reads it; an unversioned `tokenizer.model` whose
  vocabulary has instruct control tokens is read by content (`[SYSTEM_PROMPT]` -> v7, `[IMG]`/`[PREFIX]`
  -> v3, `[INST]` -> v2, else v1), since mistral-common would wrongly treat it as v1.
- `chat_template="auto"` is "mistral" for v2, v3 and v7 (their vocabulary defines the instruct format)
  and "none" for v1 and newer versions: the v1 tokenizer is shared by base and instruct models, so
  the recipe says which it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from hubtools.checkpoint.file_limits import read_tokenizer_bytes
from hubtools.checkpoint.tokenizer_file import find_tokenizer_file
from hubtools.errors import DestinationError, InvalidValueError, TokenizerError
from hubtools.filenames import (
    HF_TOKENIZER_FILES,
    SPECIAL_TOKENS_MAP,
    SPM,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    is_spm_name,
    is_tekken_name,
    spm_version,
)
from hubtools.model.hf_config import DEFAULT_MAX_POSITIONS
from hubtools.tokenization.chat_template import TEKKEN_VERSIONS, build_chat_template
from hubtools.tokenization.choices import ChatTemplate, one_of
from hubtools.tokenization.hf_json import SpecialTokens, spm_tokenizer, tekken_tokenizer
from hubtools.tokenization.sentencepiece_model import CONTROL, read_sentencepiece_model

if TYPE_CHECKING:
    from hubtools.checkpoint.reader import Checkpoint

MAX_TEKKEN_VOCAB = 1 << 22  # tekken_240911: 131072


def _kind(path: Path) -> str:
    if is_tekken_name(path.name):
        return "tekken"
    if is_spm_name(path.name):
        return "spm"
    raise TokenizerError(f"{path}: expected a native tokenizer file (tokenizer.model[.vN] or tekken*.json)")


def _read_tekken(path: Path) -> dict[str, Any]:
    """The decoded tekken.json, its sizes checked before anything is built from them.

    Raises:
        `TokenizerError`: unreadable (`file_limits`), invalid JSON, or counts that are not integers in
            range: `default_vocab_size` in 1..2^22, `default_num_special_tokens` in 0..vocab size.
    """
    try:
        data = json.loads(read_tokenizer_bytes(path).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, too many digits
        raise TokenizerError(
            f"{path}: expected a tekken tokenizer (JSON), found invalid JSON ({str(exc)[:200]})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "vocab" not in data:
        raise TokenizerError(
            f"{path}: expected a tekken tokenizer with 'config' and 'vocab' keys, found another JSON document"
        )
    config = data["config"]
    vocab, specials = config.get("default_vocab_size"), config.get("default_num_special_tokens")
    for key, value, top in (
        ("default_vocab_size", vocab, MAX_TEKKEN_VOCAB),
        ("default_num_special_tokens", specials, vocab),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            shown = repr(value)[:40]
            raise TokenizerError(f"{path}: expected config.{key} to be an integer in 0..{top}, found {shown}")
    if not isinstance(data["vocab"], list) or not isinstance(data.get("special_tokens", []), list):
        raise TokenizerError(
            f"{path}: expected 'vocab' and 'special_tokens' lists in a tekken tokenizer, found other types"
        )
    return data


def tokenizer_version(path: Path) -> str:
    """The tokenizer's version: "v1", "v2", "v3", "v7", ... for SentencePiece files, "tekken" for tekken.

    Raises:
        `TokenizerError`: unreadable file or unknown file name.

    Example:
        >>> tokenizer_version(Path("mistral_instruct_tokenizer_240323.model.v3"))  # doctest: +SKIP
        'v3'
    """
    if _kind(path) == "tekken":
        return "tekken"
    version = spm_version(path.name)
    if version:
        return version
    controls = {p.piece for p in read_sentencepiece_model(path).pieces if p.type == CONTROL}
    for marker, version in (("[SYSTEM_PROMPT]", "v7"), ("[IMG]", "v3"), ("[PREFIX]", "v3"), ("[INST]", "v2")):
        if marker in controls:
            return version
    return "v1"


def instruct_version(path: Path) -> str:
    """The chat-format version: the SentencePiece version, or the version in a tekken file's config."""
    if _kind(path) == "spm":
        return tokenizer_version(path)
    return str(_read_tekken(path)["config"].get("version", "v3"))


def tokenizer_vocab_size(path: Path) -> int:
    """The vocabulary size the embedding must have (tekken: the configured `default_vocab_size`).

    Raises:
        `TokenizerError`: unreadable or malformed file.
    """
    if _kind(path) == "spm":
        return len(read_sentencepiece_model(path).pieces)
    return int(_read_tekken(path)["config"]["default_vocab_size"])


def check_tokenizer_vocab(ckpt: Checkpoint) -> None:
    """The tokenizer's vocabulary must match the embedding rows (32000 vs 32768 mix-ups give garbage)."""
    if ckpt.tokenizer_file is None:
        return
    n = tokenizer_vocab_size(ckpt.tokenizer_file)
    if n != ckpt.params.vocab_size:
        raise TokenizerError(
            f"{ckpt.tokenizer_file}: tokenizer has {n} tokens but the embedding has "
            f"{ckpt.params.vocab_size} rows (wrong tokenizer for this checkpoint?)"
        )


def build_hf_tokenizer(path: Path) -> tuple[Tokenizer, SpecialTokens]:
    """The `tokenizers.Tokenizer` for a native file, and its special token names.

    Raises:
        `TokenizerError`: unreadable, malformed or unsupported file.
    """
    if _kind(path) == "spm":
        return spm_tokenizer(read_sentencepiece_model(path), source=str(path))
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    default = [str(t["token_str"]) for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    return tekken_tokenizer(_read_tekken(path), default_specials=default, source=str(path))


def resolve_chat_template(choice: str, version: str) -> str:
    """The flavour for a `chat_template` choice: "auto" is "mistral" for v2, v3, v7 and tekken v11, v13, else
    "none"."""
    if choice not in ChatTemplate.values():
        raise InvalidValueError(f"'{choice}': expected a chat template, one of {one_of(ChatTemplate.values())}")
    if choice == ChatTemplate.AUTO:
        return "mistral" if version in ("v2", "v3", "v7", *TEKKEN_VERSIONS) else "none"
    return choice


def hf_tokenizer_config(
    names: SpecialTokens, template: str | None, *, model_max_length: int | None = None
) -> dict[str, Any]:
    """The tokenizer_config.json written beside tokenizer.json (a generic fast tokenizer, BOS added)."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length or DEFAULT_MAX_POSITIONS,
        "bos_token": names.bos,
        "eos_token": names.eos,
        "unk_token": names.unk,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    if names.pad:
        config["pad_token"] = names.pad
    if template:
        config["chat_template"] = template
    return config


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def has_image_config(path: Path) -> bool:
    """Whether mistral-common encodes images with this file: a tekken file with an `image` config."""
    return _kind(path) == "tekken" and bool(_read_tekken(path).get("image"))


def write_hf_tokenizer(
    native_file: Path,
    dst: Path,
    *,
    chat_template: str = "auto",
    model_max_length: int | None = None,
    images: bool | None = None,
) -> list[str]:
    """Write the Hugging Face tokenizer files for a native tokenizer into `dst`, and copy the native file.

    Args:
        native_file (`Path`): `tokenizer.model[.vN]` or `tekken*.json`.
        dst (`Path`): an existing folder.
        chat_template (`str`, *optional*, defaults to "auto"): "mistral", "chatml", "none", or "auto"
            ("mistral" for v2, v3 and v7 tokenizers, "none" otherwise).
        model_max_length (`int`, *optional*): the context length (config.json's max_position_embeddings).
        images (`bool`, *optional*): whether the Mistral template takes image chunks; by default where the file
            has an image config (`has_image_config`), as mistral-common; the converter passes False for a model
            without a vision encoder.

    Returns:
        `list[str]`: the names of the files written (the native file's name last).

    Raises:
        `DestinationError`: `dst` is not a folder. `TokenizerError`: unreadable or unsupported tokenizer.
        `ChatTemplateError`: no Mistral template for this tokenizer version.

    Example:
        >>> write_hf_tokenizer(Path("tokenizer.model"), Path("out"), chat_template="none")  # doctest: +SKIP
        ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model']
    """
    if not dst.is_dir():
        raise DestinationError(f"{dst}: expected a folder for the tokenizer files, found none")
    version = instruct_version(native_file)
    flavour = resolve_chat_template(chat_template, version)
    images = has_image_config(native_file) if images is None else images and has_image_config(native_file)
    template = build_chat_template(flavour, version, spm=_kind(native_file) == "spm", images=images)
    tok, names = build_hf_tokenizer(native_file)
    tok.save(str(dst / TOKENIZER_JSON), pretty=False)
    _write_json(dst / TOKENIZER_CONFIG, hf_tokenizer_config(names, template, model_max_length=model_max_length))
    specials = {"bos_token": names.bos, "eos_token": names.eos, "unk_token": names.unk}
    _write_json(dst / SPECIAL_TOKENS_MAP, specials | ({"pad_token": names.pad} if names.pad else {}))
    written = [*HF_TOKENIZER_FILES]
    names_kept = [native_file.name]
    if _kind(native_file) == "spm" and native_file.name != SPM:
        names_kept.append(SPM)  # the name llama.cpp's converter and SentencePiece loaders look for
    for name in names_kept:
        target = dst / name
        if not target.exists() or not target.samefile(native_file):
            shutil.copyfile(native_file, target)
        written.append(name)
    return written


def restore_native_tokenizer(hf_dir: Path, dst: Path) -> Path | None:
    """Copy the native tokenizer kept in a Hugging Face folder back into `dst` (unchanged bytes).

    Returns:
        `Path | None`: the file written, or None when `hf_dir` keeps no native tokenizer.

    Raises:
        `DestinationError`: `dst` is not a folder. `LayoutError`: ambiguous tokenizer files in `hf_dir`.
    """
    if not dst.is_dir():
        raise DestinationError(f"{dst}: expected a folder for the tokenizer files, found none")
    native = find_tokenizer_file(hf_dir)
    if native is None:
        return None
    target = dst / native.name
    if not target.exists() or not target.samefile(native):
        shutil.copyfile(native, target)
    return target

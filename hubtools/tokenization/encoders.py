"""The tokenizer calls behind `SampleEncoder.for_folder`: a folder's HF tokenizer and chat template, or
mistral-common on its native tokenizer file.

Preference: the chat template in `tokenizer_config.json` (what users of the HF folder send); without one,
mistral-common's `encode_chat_completion` on the native file (a native folder, or a v1 conversion whose base
model ships no template); an HF folder with neither renders a chat as its messages' texts, one after another.
Texts are encoded as mistral-common does (`split_special_tokens=True` on the HF side: "[INST]" in a text is
text), with or without BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hubtools.checkpoint.tokenizer_file import find_tokenizer_file
from hubtools.errors import TokenizerError
from hubtools.filenames import TOKENIZER_JSON


def _hf_tokenizer(folder: Path) -> Any | None:
    if not (folder / TOKENIZER_JSON).is_file():
        return None
    import transformers

    try:
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many types for a bad folder
        raise TokenizerError(
            f"{folder}: expected a tokenizer transformers can load, found {type(exc).__name__}"
        ) from exc


def _mistral_common(path: Path) -> Any:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from hubtools.tokenization.files import tokenizer_vocab_size

    tokenizer_vocab_size(path)  # bounded and validated before mistral-common reads it
    try:
        return MistralTokenizer.from_file(str(path))
    except Exception as exc:  # mistral-common raises assertion/value errors for bad files
        raise TokenizerError(f"{path}: mistral-common cannot load it ({type(exc).__name__}: {exc})") from exc


def _reference_prompt(mt: Any, path: Path) -> Any:
    from hubtools.tokenization.parity import reference_chat_ids

    def encode(messages: Sequence[dict[str, str]]) -> list[int]:
        ids = reference_chat_ids(mt, messages, "mistral")
        if isinstance(ids, str):
            raise TokenizerError(f"{path.name}: mistral-common rejects the conversation ({ids})")
        return ids

    return encode


def folder_encoder(folder: Path) -> dict[str, Any]:
    """The fields of a `SampleEncoder` for `folder` (see the module docstring).

    Raises:
        `TokenizerError`: no HF tokenizer and no native tokenizer file, or one that cannot be loaded.
    """
    hf = _hf_tokenizer(folder)
    native = find_tokenizer_file(folder)
    if hf is None and native is None:
        raise TokenizerError(f"{folder}: expected a tokenizer (tokenizer.json or a native tokenizer file), found none")
    if hf is not None:
        text = lambda t, bos: list(hf(t, split_special_tokens=True, add_special_tokens=bos)["input_ids"])  # noqa: E731
        bos_id, eos_id = int(hf.bos_token_id), int(hf.eos_token_id)
    if hf is not None and getattr(hf, "chat_template", None):
        from hubtools.tokenization.parity import hf_chat_ids

        prompt = lambda m: hf_chat_ids(hf, m)  # noqa: E731
        describe = f"{TOKENIZER_JSON} with the folder's chat template"
    elif native is not None:
        mt = _mistral_common(native)
        raw = mt.instruct_tokenizer.tokenizer
        if hf is None:
            text = lambda t, bos: list(raw.encode(t, bos=bos, eos=False))  # noqa: E731
            bos_id, eos_id = int(raw.bos_id), int(raw.eos_id)
        prompt = _reference_prompt(mt, native)
        describe = f"chats by mistral-common's encode_chat_completion on {native.name}"
    else:
        prompt = lambda m: [bos_id, *(i for x in m for i in text(x["content"], False))]  # noqa: E731
        describe = f"{TOKENIZER_JSON}; no chat template: chats as their messages' texts"
    return {"encode_text": text, "encode_prompt": prompt, "bos_id": bos_id, "eos_id": eos_id, "describe": describe}

"""Chat templates: per-version system placement, merging, stripping, rejections, ChatML."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mistral_common.exceptions import (
    InvalidAssistantMessageException,
    InvalidMessageStructureException,
    InvalidUserMessageException,
    TokenizerException,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from pydantic import ValidationError
from transformers import AutoTokenizer

from hubtools.errors import ChatTemplateError
from hubtools.tokenization.chat_template import (
    TEMPLATE_MARKER,
    build_chat_template,
    chatml_template,
    mistral_template,
    template_flavour,
)
from hubtools.tokenization.files import write_hf_tokenizer
from hubtools.tokenization.parity import hf_chat_ids
from tests.helpers import SHIPPED_TOKENIZERS

NATIVE = {k: SHIPPED_TOKENIZERS[k] for k in ("v1", "v3", "v7")}
SYSTEM_CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"},
    {"role": "user", "content": "c"},
]


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory, hf_tokenizer: Callable[[str], Path]) -> dict[str, Any]:
    out: dict[str, Any] = {version: AutoTokenizer.from_pretrained(str(hf_tokenizer(version))) for version in NATIVE}
    folder = tmp_path_factory.mktemp("chatml")
    write_hf_tokenizer(NATIVE["v1"], folder, chat_template="chatml")
    out["chatml"] = AutoTokenizer.from_pretrained(str(folder))
    return out


def _reference(version: str, messages: list[dict[str, Any]], mode: ValidationMode = ValidationMode.test) -> list[int]:
    mt = MistralTokenizer.from_file(str(NATIVE[version]), mode=mode)
    return list(mt.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens)


def _pieces(version: str, ids: list[int]) -> str:
    mt = MistralTokenizer.from_file(str(NATIVE[version]))
    return str(mt.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP))


def test_every_template_names_its_flavour_on_its_first_line() -> None:
    for version in ("v1", "v2", "v3", "v7"):
        assert TEMPLATE_MARKER in mistral_template(version).splitlines()[0]
    assert template_flavour(mistral_template("v7", spm=False)) == "mistral"
    assert template_flavour(chatml_template()) == "chatml"
    assert template_flavour(None) == "none" and template_flavour("{{ messages }}") == "foreign"


def test_templates_exist_only_for_known_versions() -> None:
    with pytest.raises(ChatTemplateError, match="no Mistral chat template .* version 'v11'"):
        mistral_template("v11")
    with pytest.raises(ChatTemplateError, match="tekken tokenizer of version 'v1'"):
        mistral_template("v1", spm=False)
    with pytest.raises(ChatTemplateError, match="'alpaca': expected a chat template flavour"):
        build_chat_template("alpaca", "v3", spm=True)
    assert build_chat_template("none", "v3", spm=True) is None


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("v1", "<s>▁[INST]▁SYS<0x0A><0x0A>a▁[/INST]▁b</s>▁[INST]▁c▁[/INST]"),
        ("v3", "<s>[INST]▁a[/INST]▁b</s>[INST]▁SYS<0x0A><0x0A>c[/INST]"),
        ("v7", "<s>[SYSTEM_PROMPT]▁SYS[/SYSTEM_PROMPT][INST]▁a[/INST]▁b</s>[INST]▁c[/INST]"),
    ],
)
def test_system_prompt_placement_follows_the_tokenizer_version(
    toks: dict[str, Any], version: str, expected: str
) -> None:
    ids = hf_chat_ids(toks[version], SYSTEM_CHAT)
    assert ids == _reference(version, SYSTEM_CHAT)
    assert _pieces(version, ids) == expected


@pytest.mark.parametrize("version", ["v1", "v3", "v7"])
def test_consecutive_messages_of_a_role_are_merged(toks: dict[str, Any], version: str) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "one"},
        {"role": "user", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
        {"role": "assistant", "content": "x"},
        {"role": "assistant", "content": "y"},
        {"role": "user", "content": "z"},
    ]
    ids = hf_chat_ids(toks[version], messages)
    assert ids == _reference(version, messages)
    assert "one<0x0A><0x0A>two<0x0A><0x0A>three" in _pieces(version, ids)


@pytest.mark.parametrize(("version", "kept"), [("v1", True), ("v3", False), ("v7", False)])
def test_assistant_text_is_right_stripped_from_v2_on(toks: dict[str, Any], version: str, kept: bool) -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a   "},
        {"role": "user", "content": "r"},
    ]
    ids = hf_chat_ids(toks[version], messages)
    assert ids == _reference(version, messages)
    assert ("a▁▁▁</s>" in _pieces(version, ids)) is kept


LATE_SYSTEM = [
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "a"},
    {"role": "system", "content": "late"},
    {"role": "user", "content": "u"},
]
ASSISTANT_ONLY = [{"role": "assistant", "content": "a"}]
ENDS_WITH_ASSISTANT = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
EMPTY_ASSISTANT = [
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": ""},
    {"role": "user", "content": "u"},
]
UNKNOWN_ROLE = [{"role": "critic", "content": "q"}, {"role": "user", "content": "u"}]
IMAGE_CHUNK = [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]


Rejection = tuple[type[BaseException], str, str]  # the reference's error, a fragment of its message, our message


def _rejected(case: str, messages: list[dict[str, Any]], v1: Rejection, v7: Rejection | None = None) -> list[Any]:
    """One row per version (v7 rejects as v1 does unless given): (version, messages, *Rejection)."""
    return [pytest.param(v, messages, *r, id=f"{case}-{v}") for v, r in (("v1", v1), ("v7", v7 or v1))]


@pytest.mark.parametrize(
    ("version", "messages", "reference_error", "reference_message", "message"),
    [
        *_rejected(
            "late-system",
            LATE_SYSTEM,
            (
                InvalidMessageStructureException,
                "Unexpected role 'system' after role 'assistant'",
                "Unexpected role 'system' after role 'assistant'.",
            ),
        ),
        *_rejected(
            "assistant-only",
            ASSISTANT_ONLY,
            (
                InvalidMessageStructureException,
                "Conversation must start with a user message or system message",
                "A conversation of one message must be a user or system message, got assistant.",
            ),
        ),
        *_rejected(
            "ends-with-assistant",
            ENDS_WITH_ASSISTANT,
            (
                InvalidMessageStructureException,
                "Expected last role User or Tool (or Assistant with prefix) for serving but got assistant",
                "The last message must be a user (or system) message to generate a reply, got assistant.",
            ),
        ),
        *_rejected(
            "empty-assistant",
            EMPTY_ASSISTANT,
            (
                InvalidAssistantMessageException,
                "Assistant message must have either content or tool_calls, but not both.",
                "Assistant message must have either content or tool_calls, but not both.",
            ),
            (
                TokenizerException,
                "Invalid assistant message: role='assistant' content=''",
                "An assistant message must have content or tool calls.",
            ),
        ),
        *_rejected(
            "unknown-role",
            UNKNOWN_ROLE,
            (
                ValidationError,
                "Input tag 'critic' found using 'role' does not match any of the expected tags",
                "Unknown role 'critic'; expected system, user, assistant or tool.",
            ),
        ),
        *_rejected(
            "image-chunk",
            IMAGE_CHUNK,
            (
                InvalidUserMessageException,
                "Unexpected content chunk types in user message: ['ImageURLChunk']",
                "Only text chunks are supported in user messages.",
            ),
            (
                AssertionError,  # mistral-common's own check: a v7 tokenizer without an image encoder
                "Make sure to define a image encoder at init",
                "Only text chunks are supported in user messages.",
            ),
        ),
    ],
)
def test_conversations_mistral_common_rejects_raise_a_chat_template_error(
    toks: dict[str, Any],
    version: str,
    messages: list[dict[str, Any]],
    reference_error: type[BaseException],
    reference_message: str,
    message: str,
) -> None:
    with pytest.raises(reference_error, match=re.escape(reference_message)):
        _reference(version, messages)
    with pytest.raises(
        ChatTemplateError, match=f"^{re.escape(f'conversation rejected by the chat template: {message}')}$"
    ):
        hf_chat_ids(toks[version], messages)


@pytest.mark.parametrize("version", ["v1", "v3", "v7"])
def test_without_a_generation_prompt_a_final_assistant_turn_renders_like_finetuning(
    toks: dict[str, Any], version: str
) -> None:
    messages = [*SYSTEM_CHAT, {"role": "assistant", "content": "final "}]
    ids = toks[version].apply_chat_template(messages, tokenize=True, add_generation_prompt=False, return_dict=False)
    assert ids == _reference(version, messages, ValidationMode.finetuning)


def test_chatml_renders_bos_then_chatml_text(toks: dict[str, Any]) -> None:
    tok = toks["chatml"]
    messages = [{"role": "system", "content": "You are DiscoLM."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|im_start|>system\nYou are DiscoLM.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    raw = MistralTokenizer.from_file(str(NATIVE["v1"])).instruct_tokenizer.tokenizer
    assert hf_chat_ids(tok, messages) == raw.encode(text.removeprefix("<s>"), bos=True, eos=False)

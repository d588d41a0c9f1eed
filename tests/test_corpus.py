"""hubtools.tokenization.corpus and tool_corpus: the built-in parity corpus is what the README says it is.

Counts match the README, every documented category is present, nothing is duplicated, and each
conversation is accepted or rejected by mistral-common (the real tokenizer files it ships) as the corpus
means it to be: the rejected ones sit after the `# ... rejected by mistral-common` comment.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from hubtools.testing import TOKENIZERS, mistral_common_data
from hubtools.tokenization.corpus import BUILTIN_CONVERSATIONS, BUILTIN_TEXTS
from hubtools.tokenization.tool_corpus import BUILTIN_TOOL_CONVERSATIONS, TOOLS

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
FIRST_REJECTED = 28  # BUILTIN_CONVERSATIONS[28:] are meant to be rejected
FIRST_REJECTED_TOOLS = 12  # and BUILTIN_TOOL_CONVERSATIONS[12:]
V7_ONLY = 27  # an empty assistant message merged into the next one: accepted from v7 on
CONTENT_BESIDE_CALLS = 10  # text and a tool call in one assistant message: accepted from v7 on


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return {kind: MistralTokenizer.from_file(str(mistral_common_data() / f)) for kind, (f, _, _) in TOKENIZERS.items()}


def reference(tokenizer: Any, chat: dict[str, Any]) -> str | None:
    """None when mistral-common encodes the conversation, else its reason (exception class: first line)."""
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    try:
        tokenizer.encode_chat_completion(ChatCompletionRequest.model_validate(copy.deepcopy(chat)))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def outcomes(tokenizer: Any, chats: list[dict[str, Any]]) -> dict[int, str | None]:
    return {i: reference(tokenizer, chat) for i, chat in enumerate(chats)}


PLAIN = [{"messages": list(c)} for c in BUILTIN_CONVERSATIONS]


def test_counts_are_the_readmes() -> None:
    assert (len(BUILTIN_TEXTS), len(BUILTIN_CONVERSATIONS), len(BUILTIN_TOOL_CONVERSATIONS)) == (87, 35, 20)
    assert "Measured on the built-in corpus (87 texts, 35 conversations)" in README
    assert "| v1 | 89/122 (73.0%) | 122/122 (100%) |" in README  # 122 = 87 + 35
    assert "the built-in corpus adds 20 tool conversations for Mistral templates (142 sequences per" in README


def test_no_duplicates() -> None:
    assert len(set(BUILTIN_TEXTS)) == len(BUILTIN_TEXTS)
    plain = [json.dumps(c, sort_keys=True) for c in BUILTIN_CONVERSATIONS]
    tools = [json.dumps(c, sort_keys=True) for c in BUILTIN_TOOL_CONVERSATIONS]
    assert len(set(plain)) == len(plain) and len(set(tools)) == len(tools)


def test_text_categories() -> None:
    texts = BUILTIN_TEXTS
    assert "" in texts
    assert {" ", "  ", "   ", "    ", " " * 64, " " * 257} <= set(texts)  # whitespace runs
    assert {" hello", "hello ", "  hello", "hello  ", " leading and trailing "} <= set(texts)
    assert {"x" + " " * n + "y" for n in (15, 16, 17, 31, 33)} <= set(texts)  # runs across 16 and 32
    assert {"\n", "\n\n", "\r\n", "\t", "trailing newline\n", "\nleading newline"} <= set(texts)
    assert any(re.search(r"^    def fibonacci", t, re.M) for t in texts)  # indented code
    assert any(t.startswith("int main(void) {\n\t") for t in texts)  # tab-indented code
    assert any(unicodedata.name(c, "").startswith("CJK UNIFIED IDEOGRAPH") for t in texts for c in t)
    assert any(unicodedata.name(c, "").startswith("HANGUL SYLLABLE") for t in texts for c in t)
    assert any(unicodedata.name(c, "").startswith("ARABIC LETTER") for t in texts for c in t)
    assert any("\U0001f600" in t for t in texts) and "👨\u200d👩\u200d👧\u200d👦 family" in texts  # emoji, ZWJ
    assert "a" * 300 in texts and "ab" * 150 in texts  # long runs
    specials = {"<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[TOOL_CALLS]", "[IMG]", "<0x41>"}
    assert specials <= set(texts)  # special-token strings mistral-common reads as plain text
    assert "\u2581x" in texts  # SentencePiece's own space marker as a character


def roles(conversation: tuple[dict[str, object], ...]) -> list[object]:
    return [m["role"] for m in conversation]


def test_conversation_categories() -> None:
    accepted = BUILTIN_CONVERSATIONS[:FIRST_REJECTED]
    assert any(roles(c)[:2] == ["system", "user"] for c in accepted)  # system prompt first
    assert any(roles(c) == ["user", "system", "user"] for c in accepted)  # in the middle
    assert any(roles(c)[-1] == "system" for c in accepted)  # last
    assert any(roles(c)[:2] == ["system", "system"] for c in accepted)  # two of them
    assert any(roles(c)[:2] == ["user", "user"] for c in accepted)  # merged user messages
    assert any(roles(c)[1:3] == ["assistant", "assistant"] for c in accepted)  # merged assistant messages
    assistant_texts = [m["content"] for c in accepted for m in c if m["role"] == "assistant"]
    assert any(isinstance(t, str) and t != t.rstrip() for t in assistant_texts)  # right-stripped
    assert any(isinstance(m["content"], list) for c in accepted for m in c)  # chunked content
    assert any(m["content"] == "" for c in accepted for m in c)  # empty content
    rejected = BUILTIN_CONVERSATIONS[FIRST_REJECTED:]
    assert len(rejected) == 7 and () in rejected


def test_tool_conversation_categories() -> None:
    messages = [m for c in BUILTIN_TOOL_CONVERSATIONS[:FIRST_REJECTED_TOOLS] for m in c["messages"]]
    arguments = [call["function"]["arguments"] for m in messages for call in m.get("tool_calls", [])]
    assert any(isinstance(a, dict) for a in arguments) and any(isinstance(a, str) for a in arguments)
    assert '{"city":"Rome","unit":"celsius"}' in arguments  # compact JSON string
    assert any(isinstance(a, str) and "\n  " in a for a in arguments)  # indented JSON string
    assert any(isinstance(a, str) and "\\u00fc" in a for a in arguments)  # ASCII escapes (json.dumps default)
    assert any(len(m.get("tool_calls", [])) == 2 for m in messages)  # parallel calls
    results = [m["content"] for m in messages if m["role"] == "tool"]
    assert "" in results and any(isinstance(r, list) for r in results)  # empty and chunked results
    assert any(m["role"] == "system" for m in messages)
    assert any(c["tools"] == [] for c in BUILTIN_TOOL_CONVERSATIONS) and BUILTIN_TOOL_CONVERSATIONS[0]["tools"] == TOOLS


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_conversations_accepted_and_rejected_as_meant(tokenizers: dict[str, Any], kind: str) -> None:
    got = outcomes(tokenizers[kind], PLAIN)
    meant_accepted = set(range(FIRST_REJECTED)) - ({V7_ONLY} if kind != "v7" else set())
    assert {i for i, why in got.items() if why is None} == meant_accepted
    assert got[V7_ONLY] is None or "must have either content or tool_calls" in got[V7_ONLY]
    reasons = {
        28: "InvalidMessageStructureException: Conversation must have at least one message",
        29: "InvalidMessageStructureException: Conversation must start with a user message or system message",
        30: "InvalidMessageStructureException: Expected last role User or Tool (or Assistant with prefix) for "
        "serving but got assistant",
        31: "InvalidMessageStructureException: Unexpected role 'system' after role 'assistant'",
        33: "ValidationError: 1 validation error for ChatCompletionRequest",  # role "narrator"
        34: "ValidationError: 2 validation errors for ChatCompletionRequest",  # content None
    }
    assert {i: got[i] for i in reasons} == reasons
    empty_assistant = got[32] or ""  # (user, assistant "", user)
    assert empty_assistant.startswith(
        "TokenizerException: Invalid assistant message" if kind == "v7" else "InvalidAssistantMessageException"
    )


TOOL_REASONS = {
    12: "InvalidFunctionCallException: Tool call id was call_1 but must be a-z, A-Z, 0-9, with a length of 9.",
    13: "InvalidFunctionCallException: Tool call id 'null' is only allowed for the last assistant message in "
    "finetuning mode.",
    14: "InvalidMessageStructureException: Not the same number of function calls and responses",
    15: "ValidationError: 1 validation error for ChatCompletionRequest",  # tool_calls in a user message
    17: "ValidationError: 1 validation error for ChatCompletionRequest",  # an unknown field ("index") in a call
    18: "InvalidRequestException: Tool call id has to be defined.",
    19: "ValidationError: 1 validation error for ChatCompletionRequest",  # a function without parameters
}


@pytest.mark.parametrize("kind", ["v3", "v7", "tekken"])
def test_tool_conversations_rejected_as_meant(tokenizers: dict[str, Any], kind: str) -> None:
    got = outcomes(tokenizers[kind], list(BUILTIN_TOOL_CONVERSATIONS))
    assert {i: got[i] for i in TOOL_REASONS} == TOOL_REASONS
    assert (got[16] or "").startswith("InvalidFunctionCallException: Function name was bad name but must be")
    assert {0, 1, 2, 3, 4, 5, 7, 8, 11} <= {i for i, why in got.items() if why is None}
    if kind == "v7":
        assert got[CONTENT_BESIDE_CALLS] is None
    else:
        assert got[CONTENT_BESIDE_CALLS] == (
            "InvalidAssistantMessageException: Assistant message must have either content or tool_calls, but not both."
        )


def test_v1_validates_tools_and_rejects_calls(tokenizers: dict[str, Any]) -> None:
    got = outcomes(tokenizers["v1"], list(BUILTIN_TOOL_CONVERSATIONS))
    assert {i for i, why in got.items() if why is None} == {0, 11}  # tools given, no calls
    assert got[1] == "TokenizerException: Tools not implemented for tokenizer V1"
    assert got[19] == TOOL_REASONS[19]  # the tool list is still validated


@pytest.mark.parametrize("kind", ["v3", "v7", "tekken"])
def test_tool_conversations_before_the_rejected_ones_are_accepted(tokenizers: dict[str, Any], kind: str) -> None:
    got = outcomes(tokenizers[kind], list(BUILTIN_TOOL_CONVERSATIONS))
    meant = set(range(FIRST_REJECTED_TOOLS)) - ({CONTENT_BESIDE_CALLS} if kind != "v7" else set())
    assert {i for i, why in got.items() if why is None} == meant

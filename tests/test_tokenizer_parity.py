"""The parity checker: 100% on the real tokenizers, and it names what a broken conversion gets wrong."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from hubtools.errors import ChatTemplateError, TokenizerError
from hubtools.tokenization.files import restore_native_tokenizer, write_hf_tokenizer
from hubtools.tokenization.parity import (
    BUILTIN_CONVERSATIONS,
    BUILTIN_TEXTS,
    BUILTIN_TOOL_CONVERSATIONS,
    TokenizerReport,
    check_tokenizer,
    hf_chat_ids,
    load_prompts,
)
from tests.helpers import SHIPPED_TOKENIZERS

NATIVE = SHIPPED_TOKENIZERS


@pytest.fixture(scope="module")
def converted(hf_tokenizer: Callable[[str], Path]) -> dict[str, Path]:
    """Each real tokenizer converted with the Mistral chat template (shared with the other tokenizer tests)."""
    return {kind: hf_tokenizer(kind) for kind in NATIVE}


@pytest.fixture(scope="module")
def reports(converted: dict[str, Path]) -> dict[str, TokenizerReport]:
    return {kind: check_tokenizer(folder, NATIVE[kind]) for kind, folder in converted.items()}


@pytest.mark.parametrize("kind", ["v1", "v3", "v7", "tekken"])
def test_every_builtin_text_and_conversation_matches_mistral_common(
    reports: dict[str, TokenizerReport], kind: str
) -> None:
    report = reports[kind]
    assert report.misses == ()
    conversations = len(BUILTIN_CONVERSATIONS) + len(BUILTIN_TOOL_CONVERSATIONS)
    assert (report.texts, report.conversations) == (len(BUILTIN_TEXTS), conversations)
    assert report.passed and report.agreement == 1.0 and report.chat_template == "mistral"
    assert (
        report.hf_vocab_size
        == report.native_vocab_size
        == (131072 if kind == "tekken" else 32000 if kind == "v1" else 32768)
    )


@pytest.mark.parametrize("kind", ["v1", "v3", "v7", "tekken"])
def test_divergences_are_only_texts_holding_special_token_strings(
    reports: dict[str, TokenizerReport], kind: str
) -> None:
    divergent = [d.sample for d in reports[kind].divergences]
    assert "'<s>'" in divergent and "'text with <s> and </s> inside'" in divergent
    assert all(d.kind == "text" and any(s in d.sample for s in ("<", "[")) for d in reports[kind].divergences)


def test_the_report_serialises_with_what_verify_reads(reports: dict[str, TokenizerReport]) -> None:
    data = json.loads(json.dumps(reports["v1"].to_dict()))
    assert data["agreement"] == 1.0 and data["passed"] is True
    assert data["sequences"] == len(BUILTIN_TEXTS) + len(BUILTIN_CONVERSATIONS) + len(BUILTIN_TOOL_CONVERSATIONS)
    assert data["misses"] == [] and data["version"] == "v1"


def test_tekken_round_trip_restores_the_native_file_byte_identical(converted: dict[str, Path], tmp_path: Path) -> None:
    restored = restore_native_tokenizer(converted["tekken"], tmp_path)
    assert restored is not None and restored.read_bytes() == NATIVE["tekken"].read_bytes()


def test_a_planted_fault_fails_the_check_and_names_the_miss(converted: dict[str, Path], tmp_path: Path) -> None:
    """Swap the ids of '▁Hello' and '▁world' in tokenizer.json: the checker must name 'Hello, world!'."""
    folder = tmp_path / "broken"
    shutil.copytree(converted["v1"], folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab["▁Hello"], vocab["▁world"] = vocab["▁world"], vocab["▁Hello"]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    report = check_tokenizer(folder, NATIVE["v1"])
    assert not report.passed and report.agreement < 1.0
    miss = next(m for m in report.misses if m.sample == "'Hello, world!'")
    assert (miss.kind, miss.position) == ("text", 1)
    assert (miss.hf[0], miss.reference[0]) == ("▁world", "▁Hello")
    assert any(m.kind == "chat" for m in report.misses)


def test_prompts_add_texts_and_conversations_and_one_sided_rejections_are_misses(
    converted: dict[str, Path], tmp_path: Path
) -> None:
    prompts_file = tmp_path / "prompts.jsonl"
    call = {"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": '{"x": "é"}'}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}
    lines = [
        "Bonjour  le monde",
        [{"role": "user", "content": "hi"}],
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "abcDEF123", "content": "ok"},
            ],
            "tools": [tool],
        },
        {"messages": [{"role": "user", "content": "q"}], "tools": [bad_schema]},
    ]
    prompts_file.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    prompts = load_prompts(prompts_file)
    assert len(prompts) == 5 and prompts[3] == lines[3]
    report = check_tokenizer(converted["v7"], NATIVE["v7"], prompts=prompts)
    builtin = len(BUILTIN_CONVERSATIONS) + len(BUILTIN_TOOL_CONVERSATIONS)
    assert report.texts == len(BUILTIN_TEXTS) + 1 and report.conversations == builtin + 4
    [miss] = report.misses  # mistral-common checks tool parameters as a Draft 7 JSON Schema; the template cannot
    assert (miss.source, miss.index, miss.position) == ("prompts", 4, None)
    assert miss.detail.startswith("mistral-common rejected: InvalidToolSchemaException")


def test_load_prompts_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('"ok"\n42\n')
    with pytest.raises(TokenizerError, match="prompts.jsonl: line 2: expected a string or a list .*found int"):
        load_prompts(path)
    path.write_text('"ok"\n{"messages": [], "tools": {}}\n')
    with pytest.raises(TokenizerError, match='line 2: expected "tools" to be a list'):
        load_prompts(path)
    path.write_text('"ok"\n{not json\n')
    with pytest.raises(TokenizerError, match="prompts.jsonl: line 2: expected JSON"):
        load_prompts(path)


def test_a_rejected_conversation_surfaces_as_a_clear_chat_template_error(converted: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(converted["v3"]))
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "system", "content": "late system prompt"},
        {"role": "user", "content": "u"},
    ]
    with pytest.raises(ChatTemplateError, match="Unexpected role 'system' after role 'assistant'"):
        hf_chat_ids(tok, messages)


def test_chatml_folders_are_checked_against_the_encoded_chatml_text(tmp_path: Path) -> None:
    write_hf_tokenizer(NATIVE["v1"], tmp_path, chat_template="chatml")
    report = check_tokenizer(tmp_path, NATIVE["v1"])
    assert report.chat_template == "chatml" and report.passed, report.misses


def test_without_chat_only_texts_are_compared(converted: dict[str, Path]) -> None:
    report = check_tokenizer(converted["v3"], NATIVE["v3"], chat=False)
    assert report.conversations == 0 and report.passed


def test_an_unloadable_folder_is_a_tokenizer_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    refusal = f"{tmp_path}: expected the Hugging Face tokenizer (tokenizer.json), found none"
    with pytest.raises(TokenizerError, match=f"^{re.escape(refusal)}$"):
        check_tokenizer(tmp_path, NATIVE["v1"])

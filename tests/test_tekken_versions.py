"""tekken v7, v11 and v13 (Mistral Small 3.x, Magistral, Devstral, Ministral 3): texts and text conversations encode
as mistral-common encodes them; v11/v13 tool conversations are refused by the template, not encoded wrongly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hubtools.testing import write_tekken_version
from hubtools.tokenization.files import write_hf_tokenizer
from hubtools.tokenization.parity import BUILTIN_CONVERSATIONS, BUILTIN_TEXTS, check_tokenizer, hf_chat_ids
from hubtools.tokenization.tool_corpus import BUILTIN_TOOL_CONVERSATIONS


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """folders(version) -> (native tekken.json, HF tokenizer folder converted with chat_template "auto")."""
    made: dict[str, tuple[Path, Path]] = {}

    def get(version: str) -> tuple[Path, Path]:
        if version not in made:
            native = write_tekken_version(tmp_path_factory.mktemp(f"native_{version}"), version)
            hf = tmp_path_factory.mktemp(f"hf_{version}")
            write_hf_tokenizer(native, hf, chat_template="auto")
            made[version] = (native, hf)
        return made[version]

    return get


@pytest.mark.parametrize("version", [pytest.param("v7", marks=pytest.mark.slow), "v11", "v13"])
def test_texts_and_conversations_match_mistral_common(
    version: str, folders: Callable[[str], tuple[Path, Path]]
) -> None:
    """v7 tekken is covered by the tool-call stress runs too; slow here (each version converts 131,072 tokens)."""
    native, hf = folders(version)
    report = check_tokenizer(hf, native)
    assert (report.version, report.chat_template) == ("tekken", "mistral")
    assert report.texts == len(BUILTIN_TEXTS)
    tools = len(BUILTIN_TOOL_CONVERSATIONS) if version == "v7" else 0  # v11/v13: text conversations only
    assert report.conversations == len(BUILTIN_CONVERSATIONS) + tools
    assert report.misses == () and report.agreed == report.texts + report.conversations


@pytest.mark.parametrize("version", ["v11", "v13"])
def test_a_v11_or_v13_tool_conversation_is_refused_not_mis_encoded(
    version: str, folders: Callable[[str], tuple[Path, Path]]
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folders(version)[1])
    conversation = BUILTIN_TOOL_CONVERSATIONS[0]
    with pytest.raises(Exception, match=f"text conversations only for tokenizer {version}"):
        hf_chat_ids(tok, conversation["messages"], conversation.get("tools"))

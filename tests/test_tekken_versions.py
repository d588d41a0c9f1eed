"""tekken v7, v11 and v13 (Mistral Small 3.x, Magistral, Devstral, Ministral 3): texts, text conversations, tools,
tool calls, tool results and (v13) [THINK] chunks encode as mistral-common encodes them, through the chat template
`write_hf_tokenizer` writes, `apply_chat_template` and the written tokenizer.json; what mistral-common refuses, the
template refuses (raises)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hubtools.errors import ChatTemplateError
from hubtools.testing import write_tekken_version
from hubtools.tokenization.files import write_hf_tokenizer
from hubtools.tokenization.parity import (
    BUILTIN_CONVERSATIONS,
    BUILTIN_TEXTS,
    check_tokenizer,
    hf_chat,
    hf_chat_ids,
    load_hf_tokenizer,
    load_reference_tokenizer,
    reference_chat_ids,
    split_chat,
)
from hubtools.tokenization.random_chats import random_tekken_chat
from hubtools.tokenization.tekken_corpus import BUILTIN_TEKKEN_CONVERSATIONS, think
from hubtools.tokenization.tool_corpus import BUILTIN_TOOL_CONVERSATIONS, PARIS, ROME, TOOLS

Folders = Callable[[str], tuple[Path, Path]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
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


@pytest.fixture(scope="module")
def sides(folders: Folders, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Any, Any]]:
    """sides(version) -> (the written tokenizer.json with its template, mistral-common on the native file)."""
    made: dict[str, tuple[Any, Any]] = {}

    def get(version: str) -> tuple[Any, Any]:
        if version not in made:
            native, hf = folders(version)
            workdir = str(tmp_path_factory.mktemp(f"ref_{version}"))
            made[version] = (load_hf_tokenizer(hf), load_reference_tokenizer(native, "tekken", workdir))
        return made[version]

    return get


@pytest.mark.parametrize("version", [pytest.param("v7", marks=pytest.mark.slow), "v11", "v13"])
def test_texts_and_conversations_match_mistral_common(version: str, folders: Folders) -> None:
    """v7 tekken is covered by the tool-call stress runs too; slow here (each version converts 131,072 tokens)."""
    native, hf = folders(version)
    report = check_tokenizer(hf, native)
    assert (report.version, report.chat_template) == ("tekken", "mistral")
    assert report.texts == len(BUILTIN_TEXTS)
    tekken = len(BUILTIN_TEKKEN_CONVERSATIONS) if version != "v7" else 0  # thinking and id pairing: v11, v13
    assert report.conversations == len(BUILTIN_CONVERSATIONS) + len(BUILTIN_TOOL_CONVERSATIONS) + tekken
    assert report.misses == () and report.agreed == report.texts + report.conversations


def _render(sides: Callable[[str], tuple[Any, Any]], version: str, messages: list[Any], tools: Any = None) -> str:
    """Both sides give the same ids; the rendering with control tokens, as mistral-common decodes it."""
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

    tok, mt = sides(version)
    ids = hf_chat_ids(tok, messages, tools)
    assert ids == reference_chat_ids(mt, messages, "mistral", tools)
    return str(mt.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP))


def test_each_version_writes_its_tool_call_and_result_format(sides: Callable[[str], tuple[Any, Any]]) -> None:
    messages = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [PARIS, ROME]},
        {"role": "tool", "tool_call_id": "call00002", "content": "25"},  # v11/v13 put results in call order
        {"role": "tool", "tool_call_id": "call00001", "content": "22"},
        {"role": "assistant", "content": "Mild."},
        {"role": "user", "content": "Thanks"},
    ]
    v11, v13 = (_render(sides, v, messages, TOOLS) for v in ("v11", "v13"))
    assert '[TOOL_CALLS]get_weather[CALL_ID]call00001[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[CALL_ID]' in v11
    assert "[TOOL_RESULTS]call00001[TOOL_CONTENT]22[/TOOL_RESULTS][TOOL_RESULTS]call00002[TOOL_CONTENT]25" in v11
    assert '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]' in v13
    assert "[TOOL_RESULTS]22[/TOOL_RESULTS][TOOL_RESULTS]25[/TOOL_RESULTS]" in v13 and "[CALL_ID]" not in v13
    # the tool list opens the last user turn (v11, as v7) or the first one (v13)
    assert v11.index("[AVAILABLE_TOOLS]") > v11.index("Mild.") and v13.index("[AVAILABLE_TOOLS]") < v13.index("Paris?")


def test_v13_encodes_thinking_in_assistant_and_system_messages(sides: Callable[[str], tuple[Any, Any]]) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Think first."}, think("About the user.")]},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": [think("Two and two."), {"type": "text", "text": "4  "}]},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [think("Ask the tool.")], "tool_calls": [PARIS]},
        {"role": "tool", "tool_call_id": "call00001", "content": "22"},
        {"role": "assistant", "content": [think("Unfinished", closed=False)], "prefix": True},
    ]
    text = _render(sides, "v13", messages, TOOLS)
    assert "[SYSTEM_PROMPT]Think first.[THINK]About the user.[/THINK][/SYSTEM_PROMPT]" in text
    assert "[THINK]Two and two.[/THINK]4  </s>" in text  # a message with a thought is not right-stripped
    assert '[THINK]Ask the tool.[/THINK][TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>' in text
    assert text.endswith("[TOOL_RESULTS]22[/TOOL_RESULTS][THINK]Unfinished")


@pytest.mark.parametrize("version", ["v11", "v13"])
def test_what_mistral_common_refuses_the_template_refuses(
    version: str, sides: Callable[[str], tuple[Any, Any]]
) -> None:
    """Every built-in conversation mistral-common rejects raises in the template (never encodes something else)."""
    tok, mt = sides(version)
    refused = 0
    for chat in (*BUILTIN_TOOL_CONVERSATIONS, *BUILTIN_TEKKEN_CONVERSATIONS):
        messages, tools = split_chat(chat)
        if isinstance(reference_chat_ids(mt, messages, "mistral", tools), str):
            with pytest.raises(ChatTemplateError, match="rejected by the chat template"):
                hf_chat_ids(tok, messages, tools)
            refused += 1
    thoughts = sum("'thinking'" in repr(c) for c in BUILTIN_TEKKEN_CONVERSATIONS)
    assert refused == {"v11": 25, "v13": 15}[version]  # v11 also refuses every thought and 'call_Oslo_1'
    assert thoughts >= 10


def test_a_template_that_drops_think_fails_the_check_naming_the_conversations(folders: Folders, tmp_path: Path) -> None:
    native, hf = folders("v13")
    broken = tmp_path / "broken"
    shutil.copytree(hf, broken)
    config_path = broken / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    assert config["chat_template"].count("'[THINK]' ~ ") == 1
    config["chat_template"] = config["chat_template"].replace("'[THINK]' ~ ", "")
    config_path.write_text(json.dumps(config), encoding="utf-8")
    report = check_tokenizer(broken, native)
    assert not report.passed
    # exactly the conversations with a thought that mistral-common encodes (the first eight), each named
    assert {(m.source, m.index) for m in report.misses} == {("builtin-tekken", i) for i in range(8)}
    assert all("thinking" in repr(BUILTIN_TEKKEN_CONVERSATIONS[i]) for i in range(8))
    assert all("[THINK]" in m.reference and "[THINK]" not in m.hf for m in report.misses)


@pytest.mark.parametrize("version", ["v11", "v13"])
def test_random_thinking_and_tool_conversations_match_mistral_common(
    version: str, sides: Callable[[str], tuple[Any, Any]]
) -> None:
    _random_run(sides, version, range(40))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v11", "v13"])
def test_stress_run_of_random_thinking_and_tool_conversations(
    version: str, sides: Callable[[str], tuple[Any, Any]]
) -> None:
    _random_run(sides, version, range(1000, 2500))


def _random_run(sides: Callable[[str], tuple[Any, Any]], version: str, seeds: range) -> None:
    tok, mt = sides(version)
    misses = []
    for seed in seeds:
        messages, tools = split_chat(random_tekken_chat(random.Random(seed), thinking=version == "v13"))
        hf, ref = hf_chat(tok, messages, tools), reference_chat_ids(mt, messages, "mistral", tools)
        if not (hf == ref or (isinstance(hf, str) and isinstance(ref, str))):
            misses.append((seed, hf if isinstance(hf, str) else "", ref if isinstance(ref, str) else ""))
    assert misses == []


@pytest.mark.slow  # ~80 s: image preprocessing on both sides
def test_v13_conversations_with_images_match_mistral_common(folders: Folders, tmp_path: Path) -> None:
    """A vision release's v13 tekken.json (its `image` config) against the folder's template and processor."""
    from hubtools.model.vision import processor_files
    from hubtools.testing import set_image_config, tiny_vision
    from hubtools.tokenization.image_parity import check_image_parity

    native, hf = folders("v13")
    vision_native = Path(shutil.copy(native, tmp_path / native.name))
    set_image_config(vision_native, tiny_vision())
    vision_hf = Path(shutil.copytree(hf, tmp_path / "hf"))
    for name, data in processor_files(tiny_vision()).items():
        (vision_hf / name).write_text(json.dumps(data), encoding="utf-8")
    parity = check_image_parity(vision_hf, vision_native)
    assert parity.passed and parity.sequences > 0, parity


@pytest.mark.slow  # ~75 s: convert and verify twice (the default suite plants the same fault in check_tokenizer)
def test_verify_fails_a_converted_v13_model_whose_template_drops_think_naming_the_conversations(
    tmp_path: Path,
) -> None:
    """`hubtools verify` (the API it runs): a Magistral-like checkpoint with a v13 tekken.json passes, then fails
    with its template edited to drop [THINK], the tokenizer check naming each conversation with a thought."""
    from hubtools.converter import convert
    from hubtools.testing import tiny_params, write_native_checkpoint
    from hubtools.verification.run import verify

    native = write_native_checkpoint(tmp_path / "native", tiny_params(moe=False, vocab_size=131072, n_layers=1))
    for old in native.glob("tokenizer.model*"):
        old.unlink()
    write_tekken_version(native, "v13")
    convert(native, tmp_path / "hf", to="hf")
    assert verify(native, tmp_path / "hf").tokenizer.passed
    config_path = tmp_path / "hf" / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    assert "mistral v13 (tekken). " in config["chat_template"]  # a text model: no image chunks
    config["chat_template"] = config["chat_template"].replace("'[THINK]' ~ ", "")
    config_path.write_text(json.dumps(config), encoding="utf-8")
    report = verify(native, tmp_path / "hf")
    assert not report.passed and not report.tokenizer.passed
    named = {(m["source"], m["index"]) for m in report.tokenizer.details["misses"]}
    assert named == {("builtin-tekken", i) for i in range(8)}


def test_image_chunks_are_refused_without_an_image_encoder_as_mistral_common_does(
    folders: Folders, sides: Callable[[str], tuple[Any, Any]], tmp_path: Path
) -> None:
    """The converter writes `images=False` for a model without a vision encoder (and a tekken.json without an
    image config gets it by default): mistral-common refuses image chunks there too."""
    from hubtools.tokenization.chat_template import mistral_template

    native, _ = folders("v13")
    text_only = tmp_path / native.name
    text_only.write_text(json.dumps({k: v for k, v in json.loads(native.read_text()).items() if k != "image"}))
    mt = load_reference_tokenizer(text_only, "tekken", str(tmp_path))
    tok = sides("v13")[0]
    tok.chat_template = mistral_template("v13", spm=False, images=False)
    image = {"type": "image", "image": "data:image/png;base64,iVBORw0KGgo="}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]
    assert isinstance(reference_chat_ids(mt, messages, "mistral"), str)
    with pytest.raises(ChatTemplateError, match="Only text chunks"):
        hf_chat_ids(tok, messages)
    tok.chat_template = mistral_template("v13", spm=False, images=True)
    assert "[IMG]" in tok.decode(hf_chat_ids(tok, messages))

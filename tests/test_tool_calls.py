"""Function calling in the Mistral chat templates, token for token with mistral-common (v2, v3, v7, tekken)."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from mistral_common.exceptions import InvalidAssistantMessageException, UnsupportedTokenizerFeatureException
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import _compile_jinja_template

from hubtools.errors import ChatTemplateError
from hubtools.testing import mistral_common_data
from hubtools.tokenization.files import write_hf_tokenizer
from hubtools.tokenization.parity import hf_chat, hf_chat_ids, reference_chat_ids
from hubtools.tokenization.random_chats import random_json, random_tool_chat
from hubtools.tokenization.tool_corpus import TOOLS, WEATHER
from hubtools.tokenization.tool_template import JSON_VALUE

FILES = {
    "v2": "mistral_instruct_tokenizer_240216.model.v2",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
    "v7": "mistral_instruct_tokenizer_241114.model.v7",
    "tekken": "tekken_240911.json",
}
VERSIONS = list(FILES)
REFUSED = "conversation rejected by the chat template: "  # ChatTemplateError: this, then the reference's reason


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """version -> (AutoTokenizer on the folder write_hf_tokenizer wrote, mistral-common tokenizer)."""
    out = {}
    for version, name in FILES.items():
        native = mistral_common_data() / name
        folder = tmp_path_factory.mktemp(version)
        write_hf_tokenizer(native, folder, chat_template="auto")
        out[version] = (AutoTokenizer.from_pretrained(str(folder)), MistralTokenizer.from_file(str(native)))
    return out


def _call(call_id: str, arguments: Any, name: str = "get_weather") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _reference(mt: Any, messages: list[dict[str, Any]], tools: list[Any]) -> list[int]:
    request = ChatCompletionRequest(messages=copy.deepcopy(messages), tools=copy.deepcopy(tools))  # type: ignore[arg-type]
    return list(mt.encode_chat_completion(request).tokens)


def _same(pairs: dict[str, tuple[Any, Any]], version: str, messages: list[dict[str, Any]], tools: list[Any]) -> str:
    """Assert both sides give the same ids; return the rendering as pieces (control tokens kept)."""
    tok, mt = pairs[version]
    ids = hf_chat_ids(tok, messages, tools)
    assert ids == _reference(mt, messages, tools)
    return str(mt.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP))


USER = {"role": "user", "content": "Weather in Paris?"}
PARIS = _call("call00001", {"city": "Paris"})
RESULT = {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "22"}


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("v2", '[AVAILABLE_TOOLS]▁[{"type":▁"function",▁"function":▁{"name":▁"get_weather",'),
        ("v3", '[AVAILABLE_TOOLS]▁[{"type":▁"function",▁"function":▁{"name":▁"get_weather",'),
        ("v7", '[AVAILABLE_TOOLS]▁[{"type":▁"function",▁"function":▁{"name":▁"get_weather",'),
        ("tekken", '[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather",'),
    ],
)
def test_the_tool_list_opens_the_last_user_turn(pairs: dict[str, Any], version: str, expected: str) -> None:
    messages = [USER, {"role": "assistant", "content": "Which unit?"}, {"role": "user", "content": "Celsius"}]
    text = _same(pairs, version, messages, [WEATHER])
    before, after = text.split("[AVAILABLE_TOOLS]")
    assert after.startswith(expected.removeprefix("[AVAILABLE_TOOLS]"))
    assert "Which" in before and after.split("[/AVAILABLE_TOOLS]")[1].startswith("[INST]")


@pytest.mark.parametrize(
    ("version", "call", "result"),
    [
        ("v2", '[TOOL_CALLS]▁[{"name":▁"get_weather",▁"arguments":▁{"city":▁"Paris"}}]</s>',
         '[TOOL_RESULTS]▁[{"name":▁"get_weather",▁"content":▁22}][/TOOL_RESULTS]'),
        ("v3", '[TOOL_CALLS]▁[{"name":▁"get_weather",▁"arguments":▁{"city":▁"Paris"},▁"id":▁"call00001"}]</s>',
         '[TOOL_RESULTS]▁{"content":▁22,▁"call_id":▁"call00001"}[/TOOL_RESULTS]'),
        ("v7", '[TOOL_CALLS]▁[{"name":▁"get_weather",▁"arguments":▁{"city":▁"Paris"},▁"id":▁"call00001"}]</s>',
         "[TOOL_RESULTS]▁call00001[TOOL_CONTENT]▁22[/TOOL_RESULTS]"),
        ("tekken", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00001"}]</s>',
         '[TOOL_RESULTS]{"content": 22, "call_id": "call00001"}[/TOOL_RESULTS]'),
    ],
)  # fmt: skip
def test_a_single_call_and_its_result_render_in_each_versions_format(
    pairs: dict[str, Any], version: str, call: str, result: str
) -> None:
    text = _same(pairs, version, [USER, {"role": "assistant", "tool_calls": [PARIS]}, RESULT], [WEATHER])
    assert text.endswith("[/INST]" + call + result)


@pytest.mark.parametrize("version", VERSIONS)
def test_arguments_as_an_object_or_as_any_json_string_give_the_same_tokens(pairs: dict[str, Any], version: str) -> None:
    value = {"city": "Zürich 東京 😀", "n": [1, -2, 3.5e-7, 1e300, 10**20], "ok": True, "none": None, "q": '"\\\n'}
    renderings = set()
    for arguments in (value, json.dumps(value), json.dumps(value, ensure_ascii=False, separators=(",", ":")),
                      json.dumps(value, indent=2)):  # fmt: skip
        messages = [USER, {"role": "assistant", "content": None, "tool_calls": [_call("callZUR01", arguments)]}]
        renderings.add(_same(pairs, version, [*messages, {**RESULT, "tool_call_id": "callZUR01"}], [WEATHER]))
    assert len(renderings) == 1
    assert "Zürich" in renderings.pop()


@pytest.mark.parametrize("version", VERSIONS)
def test_parallel_calls_results_and_a_follow_up_turn_with_a_system_prompt(pairs: dict[str, Any], version: str) -> None:
    rome = _call("call00002", '{"city": "Rome", "unit": "celsius"}')
    messages = [
        {"role": "system", "content": "Answer briefly."},
        USER,
        {"role": "assistant", "tool_calls": [PARIS, rome]},
        RESULT,
        {"role": "tool", "tool_call_id": "call00002", "content": '{"temp": 25.5, "sky": "clear ☀️"}'},
        {"role": "assistant", "content": "22 in Paris, 25.5 in Rome."},
        {"role": "user", "content": "Merci ! Et à Oslo ?"},
    ]
    if version == "v2":
        refusal = "Tokenizer v2 does not support multiple tool results for one assistant turn."
        with pytest.raises(UnsupportedTokenizerFeatureException, match=f"^{re.escape(refusal)}$"):
            _reference(pairs[version][1], messages[:5], TOOLS)
        with pytest.raises(ChatTemplateError, match=f"^{re.escape(REFUSED + refusal)}$"):
            hf_chat_ids(pairs[version][0], messages[:5], TOOLS)
    text = _same(pairs, version, messages, TOOLS)
    system = {  # v7 has system-prompt tokens; before it, the system message opens the last user turn
        "v2": "[INST]▁Answer▁briefly.<0x0A><0x0A>Merci",
        "v3": "[INST]▁Answer▁briefly.<0x0A><0x0A>Merci",
        "v7": "<s>[SYSTEM_PROMPT]▁Answer▁briefly.[/SYSTEM_PROMPT][INST]",
        "tekken": "[INST]Answer briefly.\n\nMerci",
    }[version]
    assert system in text
    # v2 drops the calls and results before the last user message; v3 and later keep them
    assert ("[TOOL_CALLS]" in text) is (version != "v2")


@pytest.mark.parametrize("version", VERSIONS)
def test_content_beside_tool_calls_renders_in_v7_and_is_refused_before(pairs: dict[str, Any], version: str) -> None:
    messages = [USER, {"role": "assistant", "content": "Let me check.", "tool_calls": [PARIS]}, RESULT]
    if version == "v7":
        assert "Let▁me▁check.[TOOL_CALLS]" in _same(pairs, version, messages, [WEATHER])
        return
    refusal = "Assistant message must have either content or tool_calls, but not both."
    with pytest.raises(InvalidAssistantMessageException, match=f"^{re.escape(refusal)}$"):
        _reference(pairs[version][1], messages, [WEATHER])
    with pytest.raises(ChatTemplateError, match=f"^{re.escape(REFUSED + refusal)}$"):
        hf_chat_ids(pairs[version][0], messages, [WEATHER])


@pytest.mark.parametrize("version", VERSIONS)
def test_unicode_json_and_chunked_tool_results(pairs: dict[str, Any], version: str) -> None:
    for content in ('{"r": "naïve \\u00e9\\ud83d\\ude00", "x": [1.50, -0]}', "Ça va ☀️\n\tfin", "",
                    [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]):  # fmt: skip
        messages = [USER, {"role": "assistant", "tool_calls": [PARIS]}, {**RESULT, "content": content}]
        _same(pairs, version, messages, TOOLS)


def test_tools_are_validated_then_ignored_by_v1(tmp_path: Path) -> None:
    native = mistral_common_data() / "tokenizer.model.v1"
    write_hf_tokenizer(native, tmp_path, chat_template="mistral")
    tok, mt = AutoTokenizer.from_pretrained(str(tmp_path)), MistralTokenizer.from_file(str(native))
    assert hf_chat_ids(tok, [USER], [WEATHER]) == _reference(mt, [USER], [WEATHER])
    with pytest.raises(ChatTemplateError, match="Tools not implemented for tokenizer V1"):
        hf_chat_ids(tok, [USER, {"role": "assistant", "tool_calls": [PARIS]}, RESULT], [WEATHER])


REJECTED = [
    ([USER, {"role": "assistant", "tool_calls": [_call("call_1", {})]}, {**RESULT, "tool_call_id": "call_1"}],
     "Tool call id was call_1 but must be a-z, A-Z, 0-9, with a length of 9", ["v3", "v7", "tekken"]),
    ([USER, {"role": "assistant", "tool_calls": [{**PARIS, "id": "null"}]}, {**RESULT, "tool_call_id": "abcdefghi"}],
     "Tool call id 'null' is only allowed", ["v3", "v7", "tekken"]),
    ([USER, {"role": "assistant", "tool_calls": [PARIS]}, {"role": "tool", "content": "x"}],
     "Tool call id has to be defined", ["v3", "v7", "tekken"]),
    ([USER, {"role": "assistant", "tool_calls": [PARIS]}, {"role": "assistant", "content": "no result"}, USER],
     "Not the same number of function calls and responses", VERSIONS),
    ([{**USER, "tool_calls": [PARIS]}], "Extra inputs are not permitted: 'tool_calls' in a user message", VERSIONS),
    ([USER, RESULT], "Unexpected role 'tool' after role 'user'", VERSIONS),
    ([USER, {"role": "assistant", "tool_calls": [_call("call00001", {}, "get weather")]}, RESULT],
     "Function name was get weather but must be", VERSIONS),
    ([USER, {"role": "assistant", "tool_calls": [{**PARIS, "index": 0}]}, RESULT],
     "Extra inputs are not permitted: 'index' in a tool call", VERSIONS),
    ([USER, {"role": "assistant", "tool_calls": [PARIS]}, {**RESULT, "content": None}],
     "A tool message must have content", VERSIONS),
]  # fmt: skip


@pytest.mark.parametrize(("messages", "reason", "versions"), REJECTED)
def test_conversations_mistral_common_rejects_raise_its_reason(
    pairs: dict[str, Any], messages: list[dict[str, Any]], reason: str, versions: list[str]
) -> None:
    for version in VERSIONS:
        tok, mt = pairs[version]
        ref, hf = reference_chat_ids(mt, messages, "mistral", TOOLS), hf_chat(tok, messages, TOOLS)
        assert isinstance(ref, str) is (version in versions)
        assert isinstance(hf, str) is (version in versions), hf
        if version in versions:
            assert hf.startswith("conversation rejected by the chat template: ")
            assert reason in hf


def test_a_tool_without_parameters_is_rejected_like_mistral_common(pairs: dict[str, Any]) -> None:
    tok, mt = pairs["v3"]
    tools = [{"type": "function", "function": {"name": "f", "description": "no parameters"}}]
    assert isinstance(reference_chat_ids(mt, [USER], "mistral", tools), str)
    with pytest.raises(ChatTemplateError, match="parameters must be a JSON Schema object"):
        hf_chat_ids(tok, [USER], tools)


def test_json_strings_are_rewritten_exactly_as_json_loads_then_dumps() -> None:
    render = _compile_jinja_template(JSON_VALUE + "{{- json_value(x) -}}").render
    rng = random.Random(7)
    texts = ["1E5", "-0", " 42 ", "01", "[1,]", '{"a" 1}', "nul", '"\\u00e9\\ud83d\\ude00"', "1e400", "NaN", "\ufeff{}"]
    for _ in range(300):
        value = random_json(rng)
        texts.append(json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2])))
        texts.append(json.dumps(value, separators=(",", ":"))[: rng.randint(0, 40)])  # often cut: not JSON
    for text in texts:
        try:
            expected = json.dumps(json.loads(text), ensure_ascii=False)
        except json.JSONDecodeError:
            expected = json.dumps(text, ensure_ascii=False)
        assert render(x=text) == expected, text


@pytest.mark.parametrize("version", VERSIONS)
def test_random_tool_conversations_match_mistral_common(pairs: dict[str, Any], version: str) -> None:
    tok, mt = pairs[version]
    verdicts = {"identical": 0, "rejected": 0}
    for seed in range(60):
        chat = random_tool_chat(random.Random(seed))
        hf = hf_chat(tok, chat["messages"], chat["tools"])
        ref = reference_chat_ids(mt, chat["messages"], "mistral", chat["tools"])
        assert hf == ref or (isinstance(hf, str) and isinstance(ref, str)), (seed, hf, ref)
        verdicts["rejected" if isinstance(ref, str) else "identical"] += 1
    assert verdicts["identical"] >= 20 and verdicts["rejected"] >= 3  # v2 rejects the most (one result per turn)


@pytest.mark.slow
def test_stress_run_of_two_thousand_random_tool_conversations() -> None:
    from bench.tool_calls import run

    results = run(2000, 1, ["v2", "v3", "v7", "tekken", "tekken_240718", "tekken-v7"])
    assert all(r["mismatch"] == 0 for r in results.values()), {k: r["mismatches"][:1] for k, r in results.items()}

"""The built-in function-calling conversations of the tokenizer parity check.

Each is {"messages": [...], "tools": [...]} in the Hugging Face convention. They cover where the tool
list goes (before the last user message), calls with arguments as an object and as JSON strings in the
styles `json.dumps` writes (ASCII escapes, compact, indented), parallel calls, tool results (text, JSON,
chunks, empty) followed by more turns, system prompts, unicode, v7's content beside calls, and what
mistral-common rejects (bad or missing call ids, unanswered calls, a tool call in a user turn, unknown
fields, bad function names). Each version renders or rejects them as mistral-common does.
"""

from __future__ import annotations

import json
from typing import Any

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH: dict[str, Any] = {
    "type": "function",
    "function": {"name": "search-docs_2", "parameters": {"type": "object", "properties": {}}},
}
TOOLS = [WEATHER, SEARCH]


def _call(call_id: str, arguments: Any, name: str = "get_weather") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _u(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _a(text: str | None = None, *calls: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = list(calls)
    return message


def _t(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _chat(*messages: dict[str, Any], tools: list[Any] | None = None) -> dict[str, Any]:
    return {"messages": list(messages), "tools": TOOLS if tools is None else tools}


PARIS = _call("call00001", {"city": "Paris"})
ROME = _call("call00002", '{"city":"Rome","unit":"celsius"}')
BUILTIN_TOOL_CONVERSATIONS: tuple[dict[str, Any], ...] = (
    _chat(_u("Weather in Paris?")),
    _chat(_u("Weather in Paris?"), _a(None, PARIS), _t("call00001", "22 degrees, sunny")),
    _chat(_u("Paris and Rome?"), _a(None, PARIS, ROME), _t("call00001", "22"), _t("call00002", "25")),
    _chat(
        {"role": "system", "content": "Answer briefly."},
        _u("Paris?"),
        _a(None, PARIS),
        _t("call00001", '{"temp": 21.5, "sky": "clear", "rain": null}'),
        _a("21.5 degrees and clear."),
        _u("And in Rome?"),
    ),
    _chat(_u("Zürich?"), _a(None, _call("callZUR01", json.dumps({"city": "Zürich 東京 😀"}))), _t("callZUR01", "Ça")),
    _chat(_u("q"), _a(None, _call("callFMT01", json.dumps({"n": [1, -2.5e-7, 1e300]}, indent=2))), _t("callFMT01", "")),
    _chat(
        _u("q"),
        _a(None, _call("callNUM01", '{"big": 123456789012345678901234567890, "f": 1E5, "z": -0}')),
        _t("callNUM01", "ok"),
    ),
    _chat(_u("q"), _a(None, _call("callTXT01", "not json at all", "search-docs_2")), _t("callTXT01", "42")),
    _chat(_u("q"), _a(None, _call("callEMP01", "", "search-docs_2")), _t("callEMP01", [{"type": "text", "text": "a"}])),
    _chat(_u("q"), _a(None, _call("callNES01", {"a": {"b": [{"c": None}, True, '\n\t"\\']}})), _t("callNES01", "ok")),
    _chat(_u("q"), _a("Let me check.", _call("callMIX01", {"city": "Oslo"})), _t("callMIX01", "-3")),
    _chat(_u("hi"), tools=[]),
    # rejected by mistral-common
    _chat(_u("q"), _a(None, _call("call_1", {"city": "Oslo"})), _t("call_1", "x")),
    _chat(_u("q"), _a(None, _call("null", {"city": "Oslo"})), _t("null", "x")),
    _chat(_u("q"), _a(None, PARIS), _a("no result came back"), _u("u")),
    _chat({"role": "user", "content": "q", "tool_calls": [PARIS]}),
    _chat(_u("q"), _a(None, _call("callBAD01", {}, name="bad name")), _t("callBAD01", "x")),
    _chat(_u("q"), _a(None, {**PARIS, "index": 0}), _t("call00001", "x")),
    _chat(_u("q"), _a(None, PARIS), {"role": "tool", "content": "no id"}),
    _chat(_u("q"), tools=[{"type": "function", "function": {"name": "f", "description": "no parameters"}}]),
)

"""The built-in conversations of the tokenizer parity check for tekken v11 and v13 (on top of the tool corpus).

They cover what v11 and v13 encode differently from v7 (`hubtools.tokenization.tekken_template`): thinking
chunks (`{"type": "thinking", "thinking": ..., "closed": ...}`) in assistant and system messages, beside text,
unclosed, alone, beside tool calls, across merged messages; tool results given out of their calls' order
(v13 reorders them); call ids that only v13 accepts; and what mistral-common rejects (a thought in a user or
tool message, duplicate or unexpected ids, a thinking chunk with an unknown field, v11 thoughts).
"""

from __future__ import annotations

from typing import Any

from hubtools.tokenization.tool_corpus import PARIS, ROME, TOOLS


def think(text: str, closed: bool | None = None) -> dict[str, Any]:
    """A thinking chunk (mistral-common's `ThinkChunk`); `closed` left out means true."""
    return {"type": "thinking", "thinking": text} | ({} if closed is None else {"closed": closed})


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _u(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def _a(content: Any, *calls: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": content} | ({"tool_calls": list(calls)} if calls else {})


def _s(content: Any) -> dict[str, Any]:
    return {"role": "system", "content": content}


def _t(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}


def _chat(*messages: dict[str, Any], tools: list[Any] | None = None) -> dict[str, Any]:
    return {"messages": list(messages)} | ({"tools": tools} if tools is not None else {})


BUILTIN_TEKKEN_CONVERSATIONS: tuple[dict[str, Any], ...] = (
    # thinking (v13 encodes them; v11 rejects them, as mistral-common does)
    _chat(_u("2+2?"), _a([think("Add two and two."), _text("4")]), _u("And 3+3?")),
    _chat(_s([_text("You reason first."), think("Plan: be short.")]), _u("hi")),
    _chat(_s([think("Only a thought.")]), _u("hi"), _a([think("greet back", closed=False)]), _u("go on")),
    _chat(_u("q"), _a([_text("Trailing spaces   "), think("t")]), _u("q2")),
    _chat(_u("q"), _a([think("t1"), _text("a")]), _a([think("t2")]), _a("b  "), _u("q2")),
    _chat(_u("q"), _a([_text("a")]), _a([_text("b"), think("t")]), _a("c"), _u("q2")),
    _chat(_u("q"), {"role": "assistant", "content": [think("still thinking", closed=False)], "prefix": True}),
    _chat(_u("Weather?"), _a([think("Call the tool.")], PARIS), _t("call00001", "22"), tools=TOOLS),
    # tool results out of order (v13 sorts them by call), several turns, tools at the first user message (v13)
    _chat(_u("Paris, Rome?"), _a(None, PARIS, ROME), _t("call00002", "25"), _t("call00001", "22"), tools=TOOLS),
    _chat(
        _s("Be brief."),
        _u("Paris?"),
        _a(None, PARIS),
        _t("call00001", "22"),
        _a("22 degrees."),
        _u("Rome?"),
        _a(None, ROME),
        _t("call00002", "25"),
        tools=TOOLS,
    ),
    # ids of another shape: v13 accepts any non-empty id but "null", v11 wants 9 letters or digits
    _chat(_u("q"), _a(None, _call("call_Oslo_1")), _t("call_Oslo_1", "-3"), tools=TOOLS),
    # rejected by mistral-common
    _chat(_u([think("a user thought")])),
    _chat(_u("q"), _a(None, PARIS), {"role": "tool", "tool_call_id": "call00001", "content": [think("x")]}),
    _chat(_u("q"), _a([{"type": "thinking", "thinking": "t", "signature": "x"}]), _u("q2")),
    _chat(_u("q"), _a([{"type": "thinking"}]), _u("q2")),
    _chat(_u("q"), _a(None, PARIS, PARIS), _t("call00001", "1"), _t("call00001", "2"), tools=TOOLS),
    _chat(_u("q"), _a(None, PARIS), _t("call00001", "1"), _t("call00001", "2"), tools=TOOLS),
    _chat(_u("q"), _a(None, PARIS), _t("callOTHER", "1"), tools=TOOLS),
    _chat(_u("q"), _a(None, PARIS, ROME), _t("call00001", "1"), tools=TOOLS),
    _chat(_u("q"), _a(None, _call("")), _t("", "1"), tools=TOOLS),
)

"""Random function-calling conversations for the stress run of the chat templates (tests and bench).

`random_tool_chat(rng)` builds one Hugging Face style conversation with tools: random JSON Schemas, calls
with nested, unicode and numeric arguments (ints, negative, large, floats such as 1e-07 or 1e+300) given
as objects or as JSON strings in every style `json.dumps` writes (ASCII escapes, compact, indented),
parallel calls, tool results (text, JSON, chunks, empty), follow-up turns and system prompts. A few
conversations are broken on purpose (bad call ids, unanswered calls, a tool call in a user turn, content
beside calls, unknown fields) so that rejections are compared too.

Texts never contain control-token strings such as "[INST]": the Hugging Face tokenizer parses those in
text, mistral-common does not (a documented divergence, not a template question).
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

WORDS = (
    "weather", "Paris", "température", "Zürich", "東京", "данные", "naïve", "café", "😀", "🇫🇷", "a b", "x\ty",
    "line\nbreak", 'quote"d', "back\\slash", "slash/ed", "100%", "{braces}", "[1]", "  spaced  ", "", "é" * 3,
    "\u00a0nbsp", "\u2028sep", "ctrl\u0001", "emoji 👨‍👩‍👧", "مرحبا", "שלום", "한국어", "0", "-1", "null", "true",
)  # fmt: skip
_ALNUM = string.ascii_letters + string.digits


def _text(rng: random.Random, words: int = 4) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words)))


def _number(rng: random.Random) -> int | float:
    return rng.choice(
        [
            rng.randint(-5, 5),
            rng.randint(-(10**20), 10**20),
            rng.uniform(-1e3, 1e3),
            rng.choice([0.0, -0.0, 1e-7, 2.5e-3, 1e16, 1e300, -1.5e-300, 0.1, 3.0, 123456789.125]),
            round(rng.uniform(-100, 100), rng.randint(0, 4)),
        ]
    )


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: nested objects and lists, unicode strings, numbers, booleans and null."""
    kind = rng.choice(["str", "num", "bool", "null"] + (["obj", "list"] * 2 if depth < 3 else []))
    if kind == "obj":
        return {_text(rng, 2) or "k": random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "num":
        return _number(rng)
    return {"str": _text(rng), "bool": rng.random() < 0.5, "null": None}[kind]


def random_tool(rng: random.Random, name: str) -> dict[str, Any]:
    """A tool in the Hugging Face convention with a random (valid Draft 7) JSON Schema."""
    types = ["string", "integer", "number", "boolean", "array", "object"]
    properties: dict[str, Any] = {}
    for i in range(rng.randint(0, 4)):
        prop: dict[str, Any] = {"type": rng.choice(types), "description": _text(rng)}
        if prop["type"] == "string" and rng.random() < 0.4:
            prop["enum"] = [_text(rng, 1) for _ in range(rng.randint(1, 3))]
        if prop["type"] == "array":
            prop["items"] = {"type": rng.choice(types[:4])}
        if prop["type"] == "object":
            prop["properties"] = {"inner": {"type": "number", "minimum": _number(rng)}}
        properties[f"p{i}_{rng.choice(['x', 'ville', 'größe'])}"] = prop
    function: dict[str, Any] = {"name": name, "description": _text(rng, 8)}
    function["parameters"] = {"type": "object", "properties": properties, "required": sorted(properties)[:1]}
    if rng.random() < 0.1:
        del function["description"]
    return {"type": "function", "function": function}


def _arguments(rng: random.Random) -> Any:
    keys = ("a", "b", "städte")[: rng.randint(0, 3)]
    value = random_json(rng) if rng.random() < 0.2 else {k: random_json(rng, 1) for k in keys}
    style = rng.random()
    if style < 0.4 and isinstance(value, dict):
        return value
    if style < 0.55:
        return json.dumps(value)
    if style < 0.7:
        return json.dumps(value, ensure_ascii=False)
    if style < 0.8:
        return json.dumps(value, separators=(",", ":"))
    if style < 0.9:
        return json.dumps(value, indent=rng.choice([1, 2, 4]) if rng.random() < 0.8 else "\t")
    return rng.choice(["", None, "not json", "{'a': 1}", '{"a": 1,}', " 42 ", "[1, 2]", '"str"', "1E5", "-0"])


def call_id(rng: random.Random, *, broken: bool = False) -> str:
    """A 9-character alphanumeric id (mistral-common's rule from v3 on), or a broken one."""
    if broken:
        return rng.choice(["call_1", "null", "abc", "abcdefgh!", "ABCDEFGHIJ", ""])
    return "".join(rng.choice(_ALNUM) for _ in range(9))


def _tool_content(rng: random.Random) -> Any:
    choice = rng.random()
    if choice < 0.3:
        return json.dumps(random_json(rng), ensure_ascii=rng.random() < 0.5)
    if choice < 0.4:
        return [{"type": "text", "text": _text(rng)}, {"type": "text", "text": _text(rng)}]
    if choice < 0.45:
        return ""
    return _text(rng, 6)


def _call_turn(rng: random.Random, names: list[str], broken: float) -> tuple[list[dict[str, Any]], list[str]]:
    calls: list[dict[str, Any]] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        name = rng.choice(names) if rng.random() > broken else rng.choice(["bad name", "x" * 65, ""])
        function = {"name": name, "arguments": _arguments(rng)}
        calls.append({"id": call_id(rng, broken=rng.random() < broken), "type": "function", "function": function})
    message: dict[str, Any] = {"role": "assistant", "tool_calls": calls}
    if rng.random() < 0.3:
        message["content"] = rng.choice([None, "", "", "", _text(rng)])  # text beside calls: v7 only
    results = []
    for call in calls if rng.random() > broken else calls[:-1] + calls + calls:
        result: dict[str, Any] = {"role": "tool", "tool_call_id": call["id"], "content": _tool_content(rng)}
        if rng.random() < 0.3:
            result["name"] = call["function"]["name"]
        results.append(result)
    return [message, *results], [c["id"] for c in calls]


def random_tool_chat(rng: random.Random, *, broken: float = 0.02) -> dict[str, Any]:
    """One random conversation with tools: {"messages": [...], "tools": [...]}.

    Args:
        rng (`random.Random`): the source of randomness (seed it for a reproducible run).
        broken (`float`, *optional*, defaults to 0.02): the chance of each deliberate fault.

    Example:
        >>> chat = random_tool_chat(random.Random(0))
        >>> sorted(chat)
        ['messages', 'tools']
    """
    names = [f"{rng.choice(['get', 'set', 'find'])}_{rng.choice(['weather', 'time', 'x-y'])}_{i}" for i in range(3)]
    tools = [random_tool(rng, n) for n in names[: rng.randint(1, 3)]]
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": _text(rng, 6)})
    for turn in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": _text(rng, 6)})
        if turn and rng.random() < 0.15:
            messages.append({"role": "system", "content": _text(rng)})  # v7 keeps it in place
        for _ in range(rng.choice([0, 1, 1, 2])):
            block, _ids = _call_turn(rng, [t["function"]["name"] for t in tools], broken)
            messages += block
        if rng.random() < 0.5:
            messages.append({"role": "assistant", "content": _text(rng, 6)})
    if messages[-1]["role"] == "assistant" and rng.random() > broken:
        messages.append({"role": "user", "content": _text(rng)})
    if rng.random() < broken:
        messages[0] = {**messages[0], "tool_calls": []} if messages[0]["role"] == "user" else messages[0]
    if rng.random() < broken:
        messages.insert(1, {"role": "tool", "tool_call_id": call_id(rng), "content": "orphan"})
    return {"messages": messages, "tools": tools}


def _thought(rng: random.Random) -> dict[str, Any]:
    return {"type": "thinking", "thinking": _text(rng, 8), "closed": rng.random() > 0.1}


def random_tekken_chat(rng: random.Random, *, broken: float = 0.02, thinking: bool = True) -> dict[str, Any]:
    """`random_tool_chat`, then what tekken v11 / v13 encode differently: thinking chunks in assistant (and
    some system) messages, tool results out of their calls' order, and ids of other shapes (v13 accepts any
    non-empty id but "null"). An unclosed thought is only ever last in its message and followed by a special
    token (`tekken_template`'s known difference is text right after one). `thinking=False` for v11, which
    refuses thoughts.
    """
    chat = random_tool_chat(rng, broken=broken)
    messages = chat["messages"]
    for index, message in enumerate(messages):
        role, content = message["role"], message.get("content")
        if not thinking:
            continue
        if role == "assistant" and rng.random() < 0.5:
            thought = _thought(rng)
            text = [{"type": "text", "text": content}] if content else []
            later = index + 1 < len(messages) and messages[index + 1]["role"] == "assistant"
            thought["closed"] = thought["closed"] or bool(text) or later
            messages[index] = {**message, "content": [thought, *text] if thought["closed"] else [*text, thought]}
        elif role == "system" and rng.random() < 0.3:
            messages[index] = {
                **message,
                "content": [{"type": "text", "text": content}, {**_thought(rng), "closed": True}],
            }
    start = 0
    while start < len(messages):  # shuffle some runs of tool results
        end = start
        while end < len(messages) and messages[end]["role"] == "tool":
            end += 1
        if end > start + 1 and rng.random() < 0.5:
            run = messages[start:end]
            rng.shuffle(run)
            messages[start:end] = run
        start = end + 1
    if rng.random() < 0.1:
        renamed = {m.get("tool_call_id") for m in messages if m["role"] == "tool"} - {None}
        names = {old: f"{old}_{rng.choice(['x', 'long-id', 'é'])}" for old in renamed}
        chat = json.loads(json.dumps(chat))
        for message in chat["messages"]:
            for call in message.get("tool_calls") or []:
                call["id"] = names.get(call["id"], call["id"])
            if message["role"] == "tool":
                message["tool_call_id"] = names.get(message["tool_call_id"], message["tool_call_id"])
    return chat

"""Jinja fragments for the tekken v11 and v13 instruct formats (`chat_template.mistral_template`).

v11 and v13 encode text, system prompts and images as v7 does; they differ in function calling and thinking,
as mistral-common 1.13's `InstructTokenizerV11` / `V13`, `MistralRequestValidatorV11` / `V13` and
`InstructRequestNormalizerV13` do:

- a tool call is `[TOOL_CALLS]name[CALL_ID]id[ARGS]arguments` (v11) or `[TOOL_CALLS]name[ARGS]arguments`
  (v13), one after another, instead of v7's `[TOOL_CALLS][{...}, ...]`;
- a tool result is v7's `[TOOL_RESULTS]id[TOOL_CONTENT]content[/TOOL_RESULTS]` (v11) or
  `[TOOL_RESULTS]content[/TOOL_RESULTS]` (v13); both put the results of one turn in the order of its calls;
- v13 writes `[AVAILABLE_TOOLS]...[/AVAILABLE_TOOLS]` before the FIRST user message (v7, v11: the last);
- calls and results are paired by id: a result must answer a pending call, ids are unique per turn;
  v11 ids are 9 letters or digits (as v3), v13 ids any non-empty string other than "null";
- a `{"type": "thinking", "thinking": text, "closed": true}` chunk in an assistant or system message is
  `[THINK]text[/THINK]` (no `[/THINK]` when `closed` is false), v13 only; an assistant message with a
  thinking chunk is not right-stripped (mistral-common strips plain-text messages only).

Known difference: text right after an unclosed thought (`closed: false` followed by more text, which only a
half-written conversation has) is one piece of text for the Hugging Face tokenizer, two for mistral-common
(which encodes each chunk alone), so BPE may merge across the boundary.
"""

from __future__ import annotations

V13_ID_ERROR = "Tool call id must be a non-empty string other than 'null' for tokenizer version 13 or newer."

# a branch of `text_of`'s chunk loop (after images): thinking chunks, v13 only
THINKING_CHUNK = r"""
            {%- elif chunk is mapping and chunk['type'] == 'thinking' and role in ['assistant', 'system'] -%}
                {{- check_keys(chunk, ['type', 'thinking', 'closed'], 'a thinking chunk') -}}
                {%- if chunk['thinking'] is not defined or chunk['thinking'] is not string -%}
                    {{- raise_exception('A thinking chunk must have a string \'thinking\'.') -}}
                {%- endif -%}
                {%- set closed = chunk['closed'] if chunk['closed'] is defined else true -%}
                {{- parts.texts | join('\n\n') ~ '[THINK]' ~ chunk['thinking'] ~ ('[/THINK]' if closed else '') -}}
                {%- set parts.texts = [] -%}"""

# how a tool message's id is checked, and how `call_json` writes a call, per version
CHECK_V13_ID = (
    "{%- if id is not string or not id or id == 'null' -%}\n"
    f'            {{{{- raise_exception("{V13_ID_ERROR}") -}}}}\n'
    "        {%- endif -%}"
)
CALL_STYLE = {"v1": "'v2'", "v2": "'v2'", "v3": "'v3'", "v7": "'v3'", "v11": "'v11'", "v13": "'v13'"}
CALL_FORMATS = r"""
    {%- if style == 'v11' -%}
        {{- '[TOOL_CALLS]' ~ f['name'] ~ '[CALL_ID]' ~ id ~ '[ARGS]' ~ arguments -}}
    {%- elif style == 'v13' -%}
        {{- '[TOOL_CALLS]' ~ f['name'] ~ '[ARGS]' ~ arguments -}}
    {%- else -%}"""

# mistral-common's v11+ validator: results answer pending calls by id; checked from the second message on (in
# its test mode, which `encode_chat_completion` uses, a final turn may leave calls unanswered)
VALIDATE_CALL_IDS = r"""
{%- set pairing = namespace(expected=[], observed=[]) -%}
{%- for message in messages[1:] -%}
    {%- if message['role'] == 'tool' -%}
        {%- set id = message['tool_call_id'] if message['tool_call_id'] is defined else none -%}
        {%- if id in pairing.observed -%}
            {{- raise_exception('Duplicate tool call id ' ~ id ~ ' in tool results') -}}
        {%- elif id not in pairing.expected -%}
            {{- raise_exception('Unexpected tool call id ' ~ id ~ ' in tool results') -}}
        {%- endif -%}
        {%- set pairing.observed = pairing.observed + [id] -%}
    {%- elif message['role'] == 'assistant' -%}
        {%- if pairing.expected | length != pairing.observed | length -%}
            {{- raise_exception('Not the same number of function calls and responses') -}}
        {%- endif -%}
        {%- set pairing.expected = [] -%}
        {%- set pairing.observed = [] -%}
        {%- set calls = message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] else [] -%}
        {%- for call in calls -%}
            {%- set id = call['id'] if call is mapping and call['id'] is defined else none -%}
            {%- if id in pairing.expected -%}
                {{- raise_exception('Duplicate tool call id ' ~ id ~ ' in assistant message') -}}
            {%- endif -%}
            {%- set pairing.expected = pairing.expected + [id] -%}
        {%- endfor -%}
    {%- endif -%}
{%- endfor -%}
"""

# v11, v13 (mistral-common's V13 normalizer serves both): each run of tool results in the order of the calls
# of the assistant turn before it (a stable sort, written as loops: no `sort` filter, which small engines lack)
ORDER_RESULTS = r"""
{%- set order = namespace(out=[], run=[], ids=[]) -%}
{%- for message in agg.out + [{'role': 'end'}] -%}
    {%- if message['role'] == 'tool' -%}
        {%- set rank = namespace(value=order.ids | length) -%}
        {%- for id in order.ids -%}
            {%- if id == message['id'] -%}
                {%- set rank.value = loop.index0 -%}
            {%- endif -%}
        {%- endfor -%}
        {%- set order.run = order.run + [{'rank': rank.value, 'message': message}] -%}
    {%- else -%}
        {%- for rank in range(order.ids | length + 1) -%}
            {%- for item in order.run -%}
                {%- if item['rank'] == rank -%}
                    {%- set order.out = order.out + [item['message']] -%}
                {%- endif -%}
            {%- endfor -%}
        {%- endfor -%}
        {%- set order.run = [] -%}
        {%- if message['role'] == 'assistant' -%}
            {%- set order.ids = message['ids'] -%}
        {%- endif -%}
        {%- set order.out = order.out + ([message] if message['role'] != 'end' else []) -%}
    {%- endif -%}
{%- endfor -%}
{%- set agg.out = order.out -%}
"""

# an assistant turn: its calls (each its own [TOOL_CALLS]..., see `call_json`), and how its text is stripped:
# mistral-common right-strips plain text, while a v13 message with a thinking chunk stays a list of chunks
ASSISTANT = {
    "v11": ("message['calls'] | join('')", ".rstrip(' ')"),
    "v13": (
        "message['calls'] | join('')",
        ".rstrip(' ') if '[THINK]' not in message['content'] else message['content']",
    ),
}

TOOL_RESULT = {
    "v11": "{{- '[TOOL_RESULTS]' ~ message['id'] ~ '[TOOL_CONTENT]' ~ message['content'] ~ '[/TOOL_RESULTS]' -}}",
    "v13": "{{- '[TOOL_RESULTS]' ~ message['content'] ~ '[/TOOL_RESULTS]' -}}",
}

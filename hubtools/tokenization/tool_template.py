"""Jinja fragments for function calling in the Mistral chat templates (`chat_template.mistral_template`).

They reproduce what mistral-common 1.13 does with `Tool`, `ToolCall` and `ToolMessage` in
`encode_chat_completion`, for Hugging Face style inputs: `tools=[{"type": "function", "function": {name,
description, parameters}}]`, assistant messages with `tool_calls` (`id`, `type`, `function.name`,
`function.arguments` as an object or a JSON string) and `tool` messages (`tool_call_id`, `content`).

The JSON text is mistral-common's `json.dumps(..., ensure_ascii=False)`: separators ", " and ": ", keys in
their given order, non-ASCII characters written as they are. Objects are written with `tojson`, which in
transformers 4.x and 5.x is exactly that `json.dumps` (and in llama.cpp's Jinja engine uses the same
separators). A JSON *string* (arguments, or a v2/v3 tool result) is not copied: mistral-common parses it and
dumps it again (`json.loads` then `json.dumps`), so `JSON_VALUE` does the same in Jinja: it scans the text,
checks it is JSON, and writes it back canonically (whitespace dropped, separators ", "/": ", `\\uXXXX`
escapes decoded, numbers as Python writes them: `1E5` -> `100000.0`, `-0` -> `0`); text that is not JSON
becomes a JSON string, as in mistral-common.

Portability (transformers 4.x/5.x use Python's Jinja2; llama.cpp's engine and @huggingface/jinja are
smaller): no loop over a string (strings are walked by index), no open-ended string slice, no string `<`,
no operation on none, no `int(base=...)` (hex digits come from a dict), names and ids are checked by
stripping the allowed characters with `replace`. One Jinja2-only filter remains: `'%c'|format(n)`, which
writes a character decoded from a `\\uXXXX` escape above U+007E inside a JSON *string* (ASCII escapes
use a lookup); engines without `format` raise on such text. Those engines also write numbers their own
way (JavaScript: `1e-7`, no `.0`; llama.cpp: 6 significant digits), so objects with floats differ there.

Known differences (not reproduced): a JSON string with duplicate keys (json.loads keeps the last value), a
lone UTF-16 surrogate escape (rendered as a JSON string instead), non-ASCII digits in numbers, and tool
`parameters` that are not a valid JSON Schema (mistral-common checks Draft 7; the template only checks that
`parameters` is an object).
"""

from __future__ import annotations

from hubtools.tokenization.tekken_template import CALL_FORMATS, CHECK_V13_ID

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# chr(32) .. chr(126), so ASCII escapes decode without `format` (which llama.cpp's engine lacks)
_PRINTABLE = "".join(chr(i) for i in range(32, 127)).replace("\\", "\\\\").replace("'", "\\'")
_HEX = str({c: int(c, 16) for c in "0123456789abcdefABCDEF"})

# json.loads(text) then json.dumps(value, ensure_ascii=False); text that is not JSON -> json.dumps(text).
# Strings are walked by index (llama.cpp cannot loop over a string) and tokens are [kind, text] pairs.
JSON_VALUE = (
    (
        r"""
{%- macro json_escape(code) -%}
    {%- if code == 34 -%}{{- '\\"' -}}
    {%- elif code == 92 -%}{{- '\\\\' -}}
    {%- elif code == 8 -%}{{- '\\b' -}}
    {%- elif code == 9 -%}{{- '\\t' -}}
    {%- elif code == 10 -%}{{- '\\n' -}}
    {%- elif code == 12 -%}{{- '\\f' -}}
    {%- elif code == 13 -%}{{- '\\r' -}}
    {%- elif code < 32 -%}{{- '\\u00' ~ ('1' if code >= 16 else '0') ~ '0123456789abcdef'[code % 16] -}}
    {%- elif code < 127 -%}{{- '@PRINTABLE@'[code - 32] -}}
    {%- else -%}{{- '%c' | format(code) -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro json_scalar(word) -%}
    {%- if word in ['true', 'false', 'null', 'NaN', 'Infinity', '-Infinity'] -%}
        {{- word -}}
    {%- else -%}
        {#- -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, as json.loads reads numbers -#}
        {%- set n = namespace(state=0, real=false) -%}
        {%- for i in range(word | length) -%}
            {%- set c = word[i] -%}
            {%- set digit = c in '0123456789' -%}
            {%- if n.state == 0 and c == '-' -%}{%- set n.state = 1 -%}
            {%- elif n.state in [0, 1] and c == '0' -%}{%- set n.state = 2 -%}
            {%- elif n.state in [0, 1, 3] and digit -%}{%- set n.state = 3 -%}
            {%- elif n.state in [2, 3] and c == '.' -%}{%- set n.state = 4 -%}{%- set n.real = true -%}
            {%- elif n.state in [4, 5] and digit -%}{%- set n.state = 5 -%}
            {%- elif n.state in [2, 3, 5] and c in 'eE' -%}{%- set n.state = 6 -%}{%- set n.real = true -%}
            {%- elif n.state == 6 and c in '+-' -%}{%- set n.state = 7 -%}
            {%- elif n.state in [6, 7, 8] and digit -%}{%- set n.state = 8 -%}
            {%- else -%}{%- set n.state = 9 -%}
            {%- endif -%}
        {%- endfor -%}
        {%- if n.state not in [2, 3, 5, 8] -%}
            {{- '?' -}}
        {%- elif not n.real -%}
            {{- '0' if word == '-0' else word -}}
        {%- else -%}
            {%- set f = word | float -%}
            {%- if f != 0 and f == f * 2 -%}
                {{- 'Infinity' if f > 0 else '-Infinity' -}}
            {%- else -%}
                {{- f | string -}}
            {%- endif -%}
        {%- endif -%}
    {%- endif -%}
{%- endmacro -%}
{%- macro json_value(text) -%}
    {#- pass 1: tokens ['S', string] / ['V', scalar] / ['P', punctuation], strings already re-escaped -#}
    {%- set s = namespace(toks=[], buf='', word='', instr=false, esc=false, hexleft=0, code=0, high=-1, ok=true) -%}
    {%- set hex = @HEX@ -%}
    {%- for i in range(text | length + 1) -%}
        {%- set c = text[i] if i < text | length else ' ' -%}
        {%- if not s.ok -%}
        {%- elif s.instr and s.hexleft > 0 -%}
            {%- if c not in hex -%}
                {%- set s.ok = false -%}
            {%- else -%}
                {%- set s.code = s.code * 16 + hex[c] -%}
                {%- set s.hexleft = s.hexleft - 1 -%}
                {%- if s.hexleft == 0 -%}
                    {%- set code = s.code -%}
                    {%- if s.high >= 0 and code >= 56320 and code < 57344 -%}
                        {%- set s.buf = s.buf ~ json_escape(65536 + (s.high - 55296) * 1024 + code - 56320) -%}
                        {%- set s.high = -1 -%}
                    {%- elif s.high >= 0 or (code >= 56320 and code < 57344) -%}
                        {%- set s.ok = false -%}
                    {%- elif code >= 55296 and code < 56320 -%}
                        {%- set s.high = code -%}
                    {%- else -%}
                        {%- set s.buf = s.buf ~ json_escape(code) -%}
                    {%- endif -%}
                {%- endif -%}
            {%- endif -%}
        {%- elif s.instr and s.esc -%}
            {%- set s.esc = false -%}
            {%- if c == 'u' -%}
                {%- set s.hexleft = 4 -%}
                {%- set s.code = 0 -%}
            {%- elif s.high >= 0 or c not in '"\\/bfnrt' -%}
                {%- set s.ok = false -%}
            {%- else -%}
                {%- set s.buf = s.buf ~ ('/' if c == '/' else '\\' ~ c) -%}
            {%- endif -%}
        {%- elif s.instr and c == '\\' -%}
            {%- set s.esc = true -%}
        {%- elif s.instr and c == '"' and s.high < 0 -%}
            {%- set s.toks = s.toks + [['S', '"' ~ s.buf ~ '"']] -%}
            {%- set s.instr = false -%}
        {%- elif s.instr and (s.high >= 0 or (c | tojson)[0:5] == '"\\u00' or c in '\b\f\n\r\t') -%}
            {#- a lone surrogate, or a control character (json.loads refuses them raw in a string) -#}
            {%- set s.ok = false -%}
        {%- elif s.instr -%}
            {%- set s.buf = s.buf ~ c -%}
        {%- elif c in ' \t\n\r{}[]:,"' -%}
            {%- if s.word -%}
                {%- set s.toks = s.toks + [['V', json_scalar(s.word)]] -%}
                {%- set s.word = '' -%}
            {%- endif -%}
            {%- if c == '"' -%}
                {%- set s.instr = true -%}
                {%- set s.buf = '' -%}
            {%- elif c in '{}[]:,' -%}
                {%- set s.toks = s.toks + [['P', c]] -%}
            {%- endif -%}
        {%- else -%}
            {%- set s.word = s.word ~ c -%}
        {%- endif -%}
    {%- endfor -%}
    {#- pass 2: the grammar, writing ", " and ": "; `stack` holds the open brackets -#}
    {%- set g = namespace(out='', stack=[], want='V', ok=s.ok and not s.instr) -%}
    {%- for t in s.toks -%}
        {%- set kind = t[0] -%}
        {%- set body = t[1] -%}
        {%- set top = g.stack | last if g.stack else '' -%}
        {%- if not g.ok or body == '?' -%}
            {%- set g.ok = false -%}
        {%- elif kind == 'S' and g.want in ['K', 'K}'] -%}
            {%- set g.out = g.out ~ body -%}
            {%- set g.want = ':' -%}
        {%- elif kind in ['S', 'V'] and g.want in ['V', 'V]'] -%}
            {%- set g.out = g.out ~ body -%}
            {%- set g.want = 'A' if g.stack else 'E' -%}
        {%- elif kind == 'P' and body in '{[' and g.want in ['V', 'V]'] -%}
            {%- set g.out = g.out ~ body -%}
            {%- set g.stack = g.stack + [body] -%}
            {%- set g.want = 'K}' if body == '{' else 'V]' -%}
        {%- elif kind == 'P' and ((body == '}' and (g.want == 'K}' or g.want == 'A' and top == '{'))
                                  or (body == ']' and (g.want == 'V]' or g.want == 'A' and top == '['))) -%}
            {%- set g.out = g.out ~ body -%}
            {%- set g.stack = g.stack[:-1] -%}
            {%- set g.want = 'A' if g.stack else 'E' -%}
        {%- elif kind == 'P' and body == ':' and g.want == ':' -%}
            {%- set g.out = g.out ~ ': ' -%}
            {%- set g.want = 'V' -%}
        {%- elif kind == 'P' and body == ',' and g.want == 'A' -%}
            {%- set g.out = g.out ~ ', ' -%}
            {%- set g.want = 'K' if top == '{' else 'V' -%}
        {%- else -%}
            {%- set g.ok = false -%}
        {%- endif -%}
    {%- endfor -%}
    {{- g.out if g.ok and g.want == 'E' else text | tojson -}}
{%- endmacro -%}
"""
    )
    .replace("@PRINTABLE@", _PRINTABLE)
    .replace("@HEX@", _HEX)
)

# Checks of mistral-common's validator and pydantic models, and the JSON text of tools and calls.
TOOL_MACROS = (
    r"""
{%- macro rest_of(text, chars) -%}
    {#- `text` without the characters of `chars` (a list); a string is never looped over -#}
    {%- set r = namespace(rest=text) -%}
    {%- for c in chars -%}
        {%- set r.rest = r.rest | replace(c, '') -%}
    {%- endfor -%}
    {{- r.rest -}}
{%- endmacro -%}
{%- macro check_name(name, what) -%}
    {%- if name is not string or name | length < 1 or name | length > 64
          or rest_of(name, @NAME_LIST@ + ['_', '-']) -%}
        {{- raise_exception(what ~ ' was ' ~ name ~ ' but must be a-z, A-Z, 0-9, or contain underscores and dashes, '
                            ~ 'with a maximum length of 64.') -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro check_id(id, what) -%}
    {%- if id == 'null' -%}
        {{- raise_exception("Tool call id 'null' is only allowed for the last assistant message "
                            ~ "in finetuning mode.") -}}
    {%- elif id is not string or id | length != 9 or rest_of(id, @NAME_LIST@) -%}
        {{- raise_exception(what ~ ' was ' ~ id ~ ' but must be a-z, A-Z, 0-9, with a length of 9.') -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro check_keys(item, allowed, what) -%}
    {%- if item is not mapping -%}
        {{- raise_exception(what ~ ' must be an object.') -}}
    {%- endif -%}
    {%- for key in item -%}
        {%- if key not in allowed -%}
            {{- raise_exception('Extra inputs are not permitted: \'' ~ key ~ '\' in ' ~ what ~ '.') -}}
        {%- endif -%}
    {%- endfor -%}
{%- endmacro -%}
{%- macro tools_json(tools) -%}
    {%- if tools is string or tools is mapping or tools is not iterable -%}
        {{- raise_exception('tools must be a list of {"type": "function", "function": {...}} objects.') -}}
    {%- endif -%}
    {%- set t = namespace(items=[]) -%}
    {%- for tool in tools -%}
        {{- check_keys(tool, ['type', 'function'], 'a tool') -}}
        {%- set f = tool['function'] if tool['function'] is defined else none -%}
        {%- if tool['type'] is defined and tool['type'] != 'function' -%}
            {{- raise_exception('A tool\'s type must be \'function\', got ' ~ tool['type'] ~ '.') -}}
        {%- endif -%}
        {{- check_keys(f, ['name', 'description', 'parameters', 'strict'], 'a tool\'s function') -}}
        {{- check_name(f['name'] if f['name'] is defined else none, 'Function name') -}}
        {%- if f['description'] is defined and f['description'] is not string -%}
            {{- raise_exception('A function description must be a string.') -}}
        {%- endif -%}
        {%- if f['parameters'] is not defined or f['parameters'] is not mapping -%}
            {{- raise_exception('Invalid tool schema: a function\'s parameters must be a JSON Schema object.') -}}
        {%- endif -%}
        {%- set t.items = t.items + [{'type': 'function', 'function': {'name': f['name'], 'description':
            f['description'] if f['description'] is defined else '', 'parameters': f['parameters']}}] -%}
    {%- endfor -%}
    {{- t.items | tojson -}}
{%- endmacro -%}
{%- macro call_json(call, style) -%}
    {#- style: 'v2' (no id), 'v3' (JSON with the id), 'v11' or 'v13' (`tekken_template.CALL_FORMATS`) -#}
    {{- check_keys(call, ['id', 'type', 'function'], 'a tool call') -}}
    {%- set f = call['function'] if call['function'] is defined else none -%}
    {{- check_keys(f, ['name', 'arguments'], 'a tool call\'s function') -}}
    {%- if call['type'] is defined and call['type'] != 'function' -%}
        {{- raise_exception('A tool call\'s type must be \'function\', got ' ~ call['type'] ~ '.') -}}
    {%- endif -%}
    {%- set id = call['id'] if call['id'] is defined else 'null' -%}
    {%- if style == 'v13' -%}
        @CHECK_V13_ID@
    {%- elif style != 'v2' -%}
        {{- check_id(id, 'Tool call id') -}}
    {%- elif id is not string -%}
        {{- raise_exception('A tool call id must be a string.') -}}
    {%- endif -%}
    {{- check_name(f['name'] if f['name'] is defined else none, 'Function name') -}}
    {%- if f['arguments'] is not defined -%}
        {{- raise_exception('A tool call\'s function must have arguments.') -}}
    {%- endif -%}
    {%- set arguments = f['arguments'] -%}
    {%- if arguments is mapping -%}
        {%- set arguments = arguments | tojson -%}
    {%- elif arguments is none or arguments == '' -%}
        {%- set arguments = '{}' -%}
    {%- elif arguments is string -%}
        {%- set arguments = json_value(arguments) -%}
    {%- else -%}
        {{- raise_exception('A tool call\'s arguments must be an object or a JSON string.') -}}
    {%- endif -%}
    @CALL_FORMATS@
        {%- set tail = '}' if style == 'v2' else ', "id": "' ~ id ~ '"}' -%}
        {{- '{"name": "' ~ f['name'] ~ '", "arguments": ' ~ arguments ~ tail -}}
    {%- endif -%}
{%- endmacro -%}
""".replace("@NAME_LIST@", str(list(NAME_CHARS)))
    .replace("@CHECK_V13_ID@", CHECK_V13_ID)
    .replace("@CALL_FORMATS@", CALL_FORMATS)
)

# mistral-common's validator: a tool-call turn must be answered before the next assistant message
# (counted from the second message on, as `_validate_tool_calls_followed_by_tool_messages` does).
VALIDATE_CALLS = r"""
{%- set pending = namespace(count=0) -%}
{%- for message in messages[1:] -%}
    {%- if message['role'] == 'tool' -%}
        {%- set pending.count = pending.count - 1 -%}
    {%- elif message['role'] == 'assistant' -%}
        {%- if pending.count != 0 -%}
            {{- raise_exception('Not the same number of function calls and responses') -}}
        {%- endif -%}
        {%- if message['tool_calls'] is defined and message['tool_calls'] is not none -%}
            {%- set pending.count = message['tool_calls'] | length -%}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}
"""

# v2 encodes at most one tool result per tool-call turn after the last user message.
VALIDATE_V2_RESULTS = r"""
{%- set results = namespace(turn=false, count=0) -%}
{%- for message in agg.out[users.last:] -%}
    {%- if message['role'] == 'assistant' -%}
        {%- set results.turn = message['calls'] | length > 0 -%}
        {%- set results.count = 0 -%}
    {%- elif message['role'] == 'tool' and results.turn -%}
        {%- set results.count = results.count + 1 -%}
        {%- if results.count > 1 -%}
            {{- raise_exception('Tokenizer v2 does not support multiple tool results for one assistant turn.') -}}
        {%- endif -%}
    {%- elif message['role'] != 'tool' -%}
        {%- set results.turn = false -%}
        {%- set results.count = 0 -%}
    {%- endif -%}
{%- endfor -%}
"""

# How each version writes a tool result (`message` is an aggregated tool message; `before_last`: it comes
# before the last user message).
TOOL_RESULT = {
    "v1": "{{- raise_exception('Tools not implemented for tokenizer V1') -}}",
    "v2": "{%- if not before_last -%}\n"
    "            {{- '[TOOL_RESULTS][{\"name\": ' ~ (message['name'] | tojson) ~ ', \"content\": '\n"
    "                ~ json_value(message['content'] or '{}') ~ '}][/TOOL_RESULTS]' -}}\n"
    "        {%- endif -%}",
    "v3": "{{- '[TOOL_RESULTS]{\"content\": ' ~ json_value(message['content'] or '{}') ~ ', \"call_id\": \"'\n"
    "            ~ message['id'] ~ '\"}[/TOOL_RESULTS]' -}}",
    "v7": "{{- '[TOOL_RESULTS]' ~ message['id'] ~ '[TOOL_CONTENT]' ~ message['content'] ~ '[/TOOL_RESULTS]' -}}",
}

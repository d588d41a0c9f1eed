"""Jinja chat templates (stored in tokenizer_config.json) that reproduce mistral-common token for token.

`mistral_template(version)` mirrors `MistralTokenizer.encode_chat_completion` for tokenizer versions
v1, v2, v3, v7 and tekken v11, v13 (`tekken_template`) with the `tokenizer.json` that `hf_json` builds:

1. validate as mistral-common's validator does (test mode), raising for what it rejects: an empty
   conversation, a lone assistant message, a role after one it may not follow (system after
   assistant), an assistant message without content (or, v2/v3, with both content and tool calls), a
   final assistant message when a reply is asked for (`add_generation_prompt`; without it the turn
   renders with EOS, as mistral-common's finetuning mode encodes it), unknown roles or message fields,
   non-text chunks, unanswered tool calls, bad call ids or function names (`tool_template`);
2. normalise: consecutive messages of one role are merged with "\\n\\n" (empty ones skipped); for
   v1-v3 every system message goes into one system prompt (joined with "\\n\\n") placed before the
   FIRST user message (v1) or the LAST one (v2, v3); v7 keeps each system message in place as
   `[SYSTEM_PROMPT]...[/SYSTEM_PROMPT]`; an empty user message opens a conversation that does not
   start with one (v1-v3); tool messages are never merged, the tool calls of merged assistant messages are;
3. encode: `[INST]...[/INST]`, assistant text (right-stripped of spaces from v2 on) then EOS; with
   tools, `[AVAILABLE_TOOLS]...[/AVAILABLE_TOOLS]` before the last user message (v2+), tool calls and
   tool results in each version's format (see `hubtools.tokenization.tool_template`).

mistral-common encodes every text chunk separately, so SentencePiece adds its "▁" dummy prefix to each.
The tokenizer's normalizer prepends "▁" to each piece of text between special tokens, so from v2 on the
template simply concatenates chunks and special tokens. In v1 `[INST]` is text, so two chunks meet
without a special token between them; the template joins them with one space, which is the "▁" the
second chunk would get (no piece of the vocabulary contains "]▁", so BPE never merges across).

Known differences (measured by `hubtools.tokenization.parity`): an image chunk is one `[IMG]` (with `images`;
the processor expands it, `image_parity` measures both together); tool
`parameters` are not checked as a JSON Schema (mistral-common rejects invalid Draft 7 schemas); an
assistant `prefix` is honoured but `continue_final_message` is transformers' own; special-token strings
inside message text or JSON ("[INST]") are parsed as control tokens by the Hugging Face tokenizer.
`chatml_template()` renders ChatML (`<|im_start|>role\\n...<|im_end|>\\n`) after BOS for fine-tunes.
The first line of every template names it (`TEMPLATE_MARKER`), so the parity checker knows the flavour.
"""

from __future__ import annotations

from hubtools.errors import ChatTemplateError
from hubtools.tokenization import tekken_template as tekken
from hubtools.tokenization.choices import ChatTemplate, TokenizerVersion
from hubtools.tokenization.tool_template import (
    JSON_VALUE,
    TOOL_MACROS,
    TOOL_RESULT,
    VALIDATE_CALLS,
    VALIDATE_V2_RESULTS,
)

TEMPLATE_MARKER = "hubtools chat template:"
MISTRAL_VERSIONS = tuple(v.value for v in TokenizerVersion.sentencepiece())
# tekken instruct versions built on v7 (their text, system prompts and images encode as v7's); their tool calls,
# tool results and [THINK] chunks come from `hubtools.tokenization.tekken_template`
TEKKEN_VERSIONS = ("v11", "v13")
_TOOL_RESULT = TOOL_RESULT | tekken.TOOL_RESULT
FLAVOURS = tuple(ChatTemplate.values(auto=False))

_TEXT_OF = r"""
{%- macro text_of(content, role) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {%- set parts = namespace(texts=[]) -%}
        {#- mistral-common moves an image that ends a message of texts to the front -#}
        {%- if role == 'user' and content | length >= 2 and content[-1] is mapping and content[-1]['type'] == 'image'
              and content[:-1] | selectattr('type', 'equalto', 'text') | list | length == content | length - 1 -%}
            {%- set content = [content[-1]] + content[:-1] -%}
        {%- endif -%}
        {%- for chunk in content -%}
            {%- if chunk is mapping and chunk['type'] == 'image' and role == '@IMAGES_IN@' -%}
                {{- parts.texts | join('\n\n') ~ '[IMG]' -}}
                {%- set parts.texts = [] -%}@THINKING_CHUNK@
            {%- elif chunk is not mapping or chunk['type'] != 'text' -%}
                {{- raise_exception('Only text chunks are supported in ' ~ role ~ ' messages.') -}}
            {%- elif chunk['text'] -%}
                {%- set parts.texts = parts.texts + [chunk['text']] -%}
            {%- endif -%}
        {%- endfor -%}
        {{- parts.texts | join('\n\n') -}}
    {%- elif content is defined and content is not none -%}
        {{- raise_exception('The content of a ' ~ role ~ ' message must be a string or a list of text chunks.')
        -}}
    {%- endif -%}
{%- endmacro -%}
{#- Messages' texts joined as mistral-common joins them: by a blank line, except across an image or a thought -#}
{%- macro joined(texts) -%}
    {%- for text in texts -%}
        {{- '\n\n' if not loop.first and not loop.previtem.endswith('[IMG]') and not text.startswith('[IMG]')
            and not loop.previtem.endswith('[/THINK]') and not text.startswith('[THINK]') else '' -}}
        {{- text -}}
    {%- endfor -%}
{%- endmacro -%}
"""

_VALIDATE = r"""
{%- if messages | length == 0 -%}
    {{- raise_exception('A conversation must have at least one message.') -}}
{%- endif -%}
{%- if messages | length == 1 and messages[0]['role'] not in ['user', 'system'] -%}
    {{- raise_exception('A conversation of one message must be a user or system message, got '
                        ~ messages[0]['role'] ~ '.') -}}
{%- endif -%}
{%- if messages | length > 1 and add_generation_prompt is defined and add_generation_prompt
      and messages[-1]['role'] == 'assistant' and not (messages[-1]['prefix'] is defined and messages[-1]['prefix']) -%}
    {{- raise_exception('The last message must be a user (or system) message to generate a reply, got '
                        ~ messages[-1]['role'] ~ '.') -}}
{%- endif -%}
{%- set tools_text = tools_json(tools) if tools is defined and tools else '' -%}
{%- set follows = {'system': ['user', 'assistant', 'system'], 'user': ['assistant', 'system', 'user'],
                   'assistant': ['assistant', 'user', 'tool'], 'tool': ['assistant', 'tool', 'user']} -%}
{%- set fields = {'system': ['role', 'content'], 'user': ['role', 'content'],
                  'assistant': ['role', 'content', 'tool_calls', 'prefix'],
                  'tool': ['role', 'content', 'tool_call_id', 'name']} -%}
{%- set check = namespace(previous=none) -%}
{%- for message in messages -%}
    {%- set role = message['role'] -%}
    {%- set content = message['content'] if message['content'] is defined else none -%}
    {%- set calls = message['tool_calls'] if message['tool_calls'] is defined else none -%}
    {%- if role not in follows -%}
        {{- raise_exception('Unknown role \'' ~ role ~ '\'; expected system, user, assistant or tool.') -}}
    {%- elif check.previous is not none and role not in follows[check.previous] -%}
        {{- raise_exception('Unexpected role \'' ~ role ~ '\' after role \'' ~ check.previous ~ '\'.') -}}
    {%- elif role in ['system', 'user', 'tool'] and content is none -%}
        {{- raise_exception('A ' ~ role ~ ' message must have content.') -}}
    {%- elif role == 'assistant' and (not content) == (not calls)@EMPTY_ASSISTANT_OK@ -%}
        {{- raise_exception('Assistant message must have either content or tool_calls, but not both.') -}}
    {%- elif role == 'assistant' and message['prefix'] is defined and message['prefix'] and not loop.last -%}
        {{- raise_exception('Assistant message with prefix True must be last message') -}}
    {%- elif calls is not none and (calls is string or calls is mapping or calls is not iterable) -%}
        {{- raise_exception('tool_calls must be a list of tool calls.') -}}
    {%- endif -%}
    {{- check_keys(message, fields[role], 'a ' ~ role ~ ' message') -}}
    {%- if role == 'tool' -%}
        {%- set id = message['tool_call_id'] if message['tool_call_id'] is defined else none -%}
        @CHECK_TOOL_ID@
        {%- if message['name'] is defined and message['name'] is not none -%}
            {{- check_name(message['name'], 'Function name') -}}
        {%- endif -%}
    {%- endif -%}
    {%- set check.previous = role -%}
{%- endfor -%}
"""
_CHECK_TOOL_ID = {
    "v2": "{%- if id is not none and id is not string -%}\n"
    "            {{- raise_exception('A tool call id must be a string.') -}}\n"
    "        {%- endif -%}",
    "v3": "{%- if id is none -%}\n"
    "            {{- raise_exception('Tool call id has to be defined.') -}}\n"
    "        {%- endif -%}\n"
    "        {{- check_id(id, 'Tool call id') -}}",
}

_AGGREGATE = r"""
{%- set agg = namespace(out=[], system=[], role='', texts=[], calls=[], ids=[], prefix=false) -%}
{%- for message in messages + [{'role': 'end'}] -%}
    {%- set role = message['role'] -%}
    {%- set content = message['content'] if message['content'] is defined else none -%}
    {%- if role != agg.role or role == 'tool' -%}
        {%- if agg.role in ['user', 'assistant'] -%}
            {%- set agg.out = agg.out + [{'role': agg.role, 'content': joined(agg.texts), 'calls': agg.calls,
                                          'prefix': agg.prefix, 'ids': agg.ids}] -%}
        {%- endif -%}
        {%- set agg.role = role -%}
        {%- set agg.texts = [] -%}
        {%- set agg.calls = [] -%}
        {%- set agg.ids = [] -%}
        {%- set agg.prefix = false -%}
    {%- endif -%}
    {%- set text = text_of(content, role) -%}
    {%- if role == 'system' -%}
        @SYSTEM@
    {%- elif role == 'tool' -%}
        {%- set agg.out = agg.out + [{'role': 'tool', 'content': text, 'id': message['tool_call_id'] | default(none),
                                      'name': message['name'] | default(none)}] -%}
    {%- elif role in ['user', 'assistant'] -%}
        {%- if text -%}
            {%- set agg.texts = agg.texts + [text] -%}
        {%- endif -%}
        {%- if message['tool_calls'] is defined and message['tool_calls'] -%}
            {%- for call in message['tool_calls'] -%}
                {%- set agg.calls = agg.calls + [call_json(call, @CALL_STYLE@)] -%}
                {%- set agg.ids = agg.ids + [call['id'] if call is mapping and call['id'] is defined else none] -%}
            {%- endfor -%}
        {%- endif -%}
        {%- if message['prefix'] is defined and message['prefix'] -%}
            {%- set agg.prefix = true -%}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}
{%- set system = agg.system | join('\n\n') -%}
{%- if agg.out | length == 0 @FIRST_NOT_USER@ -%}
    {%- set agg.out = [{'role': 'user', 'content': ''}] + agg.out -%}
{%- endif -%}
{%- set users = namespace(first=-1, last=-1) -%}
{%- for message in agg.out -%}
    {%- if message['role'] == 'user' -%}
        {%- if users.first < 0 -%}
            {%- set users.first = loop.index0 -%}
        {%- endif -%}
        {%- set users.last = loop.index0 -%}
    {%- endif -%}
{%- endfor -%}
"""

_SYSTEM_PROMPT = "{%- if content -%}{%- set agg.system = agg.system + [text] -%}{%- endif -%}"
_SYSTEM_MESSAGE = "{%- set agg.out = agg.out + [{'role': 'system', 'content': text}] -%}"

_ENCODE = r"""
{{- bos_token -}}
{%- set state = namespace(after_text=false) -%}
{%- for message in agg.out -%}
    {%- set before_last = loop.index0 < users.last -%}
    {%- set eos = '' if message['prefix'] else eos_token -%}
    {%- if message['role'] == 'user' -%}
        {%- if loop.index0 == users.@TOOLS_AT@ and tools_text @HAS_TOOL_TOKENS@ -%}
            {{- '[AVAILABLE_TOOLS]' ~ tools_text ~ '[/AVAILABLE_TOOLS]' -}}
        {%- endif -%}
        @USER@
    {%- elif message['role'] == 'assistant' -%}
        @ASSISTANT@
    {%- elif message['role'] == 'tool' -%}
        @TOOL@
    {%- else -%}
        {{- '[SYSTEM_PROMPT]' ~ message['content'] ~ '[/SYSTEM_PROMPT]' -}}
    {%- endif -%}
{%- endfor -%}
"""

_USER = {
    "v1": "{%- set content = system ~ '\\n\\n' ~ message['content'] if loop.index0 == users.first and system\n"
    "                             else message['content'] -%}\n"
    "        {{- (' ' if state.after_text else '') ~ '[INST] ' ~ content ~ ' [/INST]' -}}\n"
    "        {%- set state.after_text = true -%}",
    "v2": "{%- set content = system ~ '\\n\\n' ~ message['content'] if loop.index0 == users.last and system\n"
    "                             else message['content'] -%}\n"
    "        {{- '[INST]' ~ content ~ '[/INST]' -}}",
    "v7": "{{- '[INST]' ~ message['content'] ~ '[/INST]' -}}",
}
_ASSISTANT = {
    "v1": "{%- if message['calls'] -%}\n"
    "            {{- raise_exception('Tools not implemented for tokenizer V1') -}}\n"
    "        {%- elif not message['content'] -%}\n"
    "            {{- raise_exception('An assistant message must have content.') -}}\n"
    "        {%- endif -%}\n"
    "        {{- (' ' if state.after_text else '') ~ message['content'] ~ eos -}}\n"
    "        {%- set state.after_text = false -%}",
    # v2 drops tool calls before the last user message (and their EOS); v3 keeps them
    "v2": "{%- if message['calls'] and message['content'] -%}\n"
    "            {{- raise_exception('Cannot have tool calls and content defined in the same assistant message') -}}\n"
    "        {%- elif message['calls'] -%}\n"
    "            {{- ('[TOOL_CALLS][' ~ message['calls'] | join(', ') ~ ']' ~ eos) if not before_last@V3@ else '' -}}\n"
    "        {%- elif message['content'] -%}\n"
    "            {{- message['content'].rstrip(' ') ~ eos -}}\n"
    "        {%- else -%}\n"
    "            {{- raise_exception('An assistant message must have content.') -}}\n"
    "        {%- endif -%}",
    "v7": "{%- if not message['content'] and not message['calls'] -%}\n"
    "            {{- raise_exception('An assistant message must have content or tool calls.') -}}\n"
    "        {%- endif -%}\n"
    "        {{- message['content']@RSTRIP@ -}}\n"
    "        {{- @CALLS@ if message['calls'] else '' -}}\n"
    "        {{- eos -}}",
}

_CHATML = r"""{#- hubtools chat template: chatml. BOS, then <|im_start|>role\n...<|im_end|>\n per message. -#}
{{- bos_token -}}
{%- for message in messages -%}
    {%- if message['content'] is not string -%}
        {{- raise_exception('ChatML messages must have string content.') -}}
    {%- endif -%}
    {{- '<|im_start|>' ~ message['role'] ~ '\n' ~ message['content'] ~ '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt is defined and add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""


def mistral_template(version: str, *, spm: bool = True, images: bool = False) -> str:
    """The Mistral instruct template for a tokenizer version.

    Args:
        version (`str`): "v1", "v2", "v3" or "v7" (the instruct version, also for tekken files); for tekken also
            "v11" and "v13" (`TEKKEN_VERSIONS`: v7 plus their tool-call formats and, v13, [THINK] chunks).
        spm (`bool`, *optional*, defaults to True): SentencePiece (True) or tekken (False). v1 exists only as
            SentencePiece, v11 and v13 only as tekken; the other versions do not depend on it.
        images (`bool`, *optional*, defaults to False): image chunks in user messages become `[IMG]` (for the
            processor to expand); False refuses them, as mistral-common does without an image encoder.

    Returns:
        `str`: the Jinja template.

    Raises:
        `ChatTemplateError`: no template for this version.

    Example:
        >>> "[SYSTEM_PROMPT]" in mistral_template("v7")
        True
    """
    known = (*MISTRAL_VERSIONS[1:], *TEKKEN_VERSIONS) if not spm else MISTRAL_VERSIONS
    if version not in known:
        kind = "SentencePiece" if spm else "tekken"
        raise ChatTemplateError(
            f"no Mistral chat template for a {kind} tokenizer of version '{version}' "
            f"(expected one of {', '.join(known)}). Use chat_template='none'."
        )
    header = (
        f"{{#- {TEMPLATE_MARKER} mistral {version} ({'sentencepiece' if spm else 'tekken'}"
        f"{', images' if images else ''}). "
        "Mirrors mistral-common encode_chat_completion: validate, merge, encode. -#}"
    )
    text_of = _TEXT_OF.replace("@THINKING_CHUNK@", tekken.THINKING_CHUNK if version == "v13" else "")
    text_of = text_of.replace("@IMAGES_IN@", "user" if images else "no role")
    return header + text_of + JSON_VALUE + TOOL_MACROS + _validate(version) + _aggregate(version) + _encode(version)


def _family(version: str) -> str:
    """The version whose text format `version` shares: v11 and v13 are v7's."""
    return "v7" if version in TEKKEN_VERSIONS else version


def _validate(version: str) -> str:
    # v7 validates content after merging only (mistral-common lets an empty one join a non-empty one)
    validate = _VALIDATE.replace("@EMPTY_ASSISTANT_OK@", " and false" if _family(version) == "v7" else "")
    check_id = tekken.CHECK_V13_ID if version == "v13" else _CHECK_TOOL_ID["v2" if version in ("v1", "v2") else "v3"]
    validate = validate.replace("@CHECK_TOOL_ID@", check_id)
    return validate + (tekken.VALIDATE_CALL_IDS if version in TEKKEN_VERSIONS else VALIDATE_CALLS)


def _aggregate(version: str) -> str:
    v7 = _family(version) == "v7"
    aggregate = _AGGREGATE.replace("@SYSTEM@", _SYSTEM_MESSAGE if v7 else _SYSTEM_PROMPT)
    aggregate = aggregate.replace("@CALL_STYLE@", tekken.CALL_STYLE[version])
    aggregate = aggregate.replace("@FIRST_NOT_USER@", "" if v7 else "or agg.out[0]['role'] != 'user'")
    order = tekken.ORDER_RESULTS if version in TEKKEN_VERSIONS else ""
    return aggregate + (VALIDATE_V2_RESULTS if version == "v2" else "") + order


def _encode(version: str) -> str:
    key = "v2" if version == "v3" else _family(version)
    assistant = _ASSISTANT[key].replace("@V3@", " or true" if version == "v3" else "")
    calls, rstrip = tekken.ASSISTANT.get(
        version, ("('[TOOL_CALLS][' ~ message['calls'] | join(', ') ~ ']')", ".rstrip(' ')")
    )
    assistant = assistant.replace("@CALLS@", calls).replace("@RSTRIP@", rstrip)
    encode = _ENCODE.replace("@USER@", _USER[key]).replace("@ASSISTANT@", assistant)
    encode = encode.replace("@TOOL@", _TOOL_RESULT[version]).replace(
        "@TOOLS_AT@", "first" if version == "v13" else "last"
    )
    # v1 has no tool tokens: mistral-common validates the tools, then ignores them
    return encode.replace("@HAS_TOOL_TOKENS@", "and false" if version == "v1" else "")


def chatml_template() -> str:
    """The ChatML template (BOS first; `add_generation_prompt` opens an assistant turn).

    Example:
        >>> "<|im_start|>assistant" in chatml_template()
        True
    """
    return _CHATML


def build_chat_template(flavour: str, version: str, *, spm: bool, images: bool = False) -> str | None:
    """The template for a flavour ("mistral", "chatml" or "none"); None for "none". `images`: see `mistral_template`.

    Raises:
        `ChatTemplateError`: unknown flavour, or no Mistral template for `version`.
    """
    if flavour == "none":
        return None
    if flavour == "chatml":
        return chatml_template()
    if flavour == "mistral":
        return mistral_template(version, spm=spm, images=images)
    raise ChatTemplateError(f"'{flavour}': expected a chat template flavour, one of {', '.join(FLAVOURS)}")


def template_flavour(template: str | None) -> str:
    """ "mistral", "chatml" or "none" for a hubtools template (or none); "foreign" for any other template.

    Example:
        >>> template_flavour(chatml_template()), template_flavour(None), template_flavour("{{ x }}")
        ('chatml', 'none', 'foreign')
    """
    if not template:
        return "none"
    head = template[:200]
    if TEMPLATE_MARKER not in head:
        return "foreign"
    word = head.split(TEMPLATE_MARKER, 1)[1].split()[0].strip(".")
    return word if word in FLAVOURS else "foreign"

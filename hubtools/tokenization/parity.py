"""Token-for-token parity of a Hugging Face tokenizer folder with mistral-common (the reference).

`check_tokenizer` encodes a built-in corpus of edge cases (`BUILTIN_TEXTS`), a built-in set of
conversations (`BUILTIN_CONVERSATIONS`) and the caller's prompts on both sides:

- a text: HF `tok(text, split_special_tokens=True)` against mistral-common `encode(text, bos=True,
  eos=False)`. The default `tok(text)` is compared too: where it differs only because HF parses a
  special-token string in the text ("<s>", "[INST]"), that is a documented divergence, not a miss;
- a conversation: HF `apply_chat_template(messages, tools=tools, add_generation_prompt=True)` against
  mistral-common `encode_chat_completion(ChatCompletionRequest(messages=..., tools=...))` (ChatML
  templates: against BOS + the encoded ChatML text). A conversation both sides reject agrees; one
  rejected by one side only is a miss. Conversations with tools (`BUILTIN_TOOL_CONVERSATIONS`, or
  `{"messages": [...], "tools": [...]}` prompts) are compared for Mistral templates, and for tekken v11 and
  v13 the thinking and tool-pairing conversations of `BUILTIN_TEKKEN_CONVERSATIONS` too.

Each miss names the first differing position and the tokens from there, decoded with the reference
vocabulary on both sides (so a corrupted HF vocabulary shows up as the wrong piece).
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hubtools.checkpoint.file_limits import read_tokenizer_bytes
from hubtools.errors import ChatTemplateError, TokenizerError
from hubtools.filenames import TOKENIZER_JSON, spm_versioned_name
from hubtools.tokenization.chat_template import TEKKEN_VERSIONS, template_flavour
from hubtools.tokenization.corpus import BUILTIN_CONVERSATIONS, BUILTIN_TEXTS
from hubtools.tokenization.files import instruct_version, tokenizer_version, tokenizer_vocab_size
from hubtools.tokenization.tekken_corpus import BUILTIN_TEKKEN_CONVERSATIONS
from hubtools.tokenization.tool_corpus import BUILTIN_TOOL_CONVERSATIONS

__all__ = [
    "BUILTIN_CONVERSATIONS",
    "BUILTIN_TEKKEN_CONVERSATIONS",
    "BUILTIN_TEXTS",
    "BUILTIN_TOOL_CONVERSATIONS",
    "Miss",
    "TokenizerReport",
    "check_tokenizer",
    "hf_chat",
    "hf_chat_ids",
    "load_prompts",
    "reference_chat_ids",
    "split_chat",
]

WINDOW = 4


@dataclass(frozen=True)
class Miss:
    """One sequence on which the two sides differ."""

    kind: str  # "text" or "chat"
    source: str  # "builtin", "builtin-tools", "builtin-tekken" or "prompts"
    index: int
    sample: str
    position: int | None  # first differing token; None when a side rejected the input
    hf: tuple[str, ...]
    reference: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class TokenizerReport:
    """What `check_tokenizer` found. `passed` when every sequence agrees and the vocabulary sizes match.

    Example:
        >>> r = TokenizerReport("hf", "tokenizer.model", "v1", "none", texts=1, conversations=0, agreed=1,
        ...                     hf_vocab_size=32000, native_vocab_size=32000)
        >>> r.passed, r.agreement
        (True, 1.0)
    """

    hf_dir: str
    native_file: str
    version: str
    chat_template: str
    texts: int
    conversations: int
    agreed: int
    misses: tuple[Miss, ...] = ()
    divergences: tuple[Miss, ...] = field(default=())
    hf_vocab_size: int | None = None
    native_vocab_size: int | None = None

    @property
    def sequences(self) -> int:
        return self.texts + self.conversations

    @property
    def agreement(self) -> float:
        return self.agreed / self.sequences if self.sequences else 0.0

    @property
    def passed(self) -> bool:
        return self.sequences > 0 and self.agreed == self.sequences and self.hf_vocab_size == self.native_vocab_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "hf_dir": self.hf_dir,
            "native_file": self.native_file,
            "version": self.version,
            "chat_template": self.chat_template,
            "texts": self.texts,
            "conversations": self.conversations,
            "sequences": self.sequences,
            "agreed": self.agreed,
            "agreement": self.agreement,
            "passed": self.passed,
            "hf_vocab_size": self.hf_vocab_size,
            "native_vocab_size": self.native_vocab_size,
            "misses": [asdict(m) for m in self.misses],
            "special_token_divergences": [asdict(m) for m in self.divergences],
        }


Prompt = str | list[dict[str, Any]] | dict[str, Any]


def split_chat(chat: list[dict[str, Any]] | dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """(messages, tools) of a conversation prompt: a list of messages, or {"messages": [...], "tools": [...]}."""
    if isinstance(chat, dict):
        return list(chat["messages"]), chat.get("tools")
    return list(chat), None


def load_prompts(path: Path) -> list[Prompt]:
    """Read prompts from JSONL: each line a string (a text) or a list of {role, content} (a conversation).

    An object with "messages" (a conversation; with "tools" it is kept as {"messages", "tools"}) or
    "text"/"prompt" (a text) is accepted too.

    Raises:
        `TokenizerError`: unreadable file or a line of another shape (the line is named).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: expected a readable prompts file, found {exc}") from exc
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, deep nesting
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise TokenizerError(f"{path}: line {number}: expected JSON, found {detail}") from None
        tools = item.get("tools") if isinstance(item, dict) else None
        if tools is not None and not isinstance(tools, list):
            raise TokenizerError(f'{path}: line {number}: expected "tools" to be a list of tools, found another value')
        if isinstance(item, dict):
            item = item.get("messages", item.get("text", item.get("prompt")))
        if _is_conversation(item) and tools is not None:
            prompts.append({"messages": item, "tools": tools})
        elif isinstance(item, str) or _is_conversation(item):
            prompts.append(item)
        else:
            raise TokenizerError(
                f"{path}: line {number}: expected a string or a list of {{role, content}} messages, "
                f"found {_shape(item)}"
            )
    return prompts


def _is_conversation(item: Any) -> bool:
    """A non-empty list of messages, each an object with a string "role" (what both tokenizers need)."""
    return (
        isinstance(item, list)
        and bool(item)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in item)
    )


def _shape(item: Any) -> str:
    if isinstance(item, list):
        return "an empty list" if not item else "a message without a string 'role'"
    return type(item).__name__


def hf_chat_ids(tok: Any, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None = None) -> list[int]:
    """`apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=True)` as a list of ids.

    Raises:
        `ChatTemplateError`: the template rejects the conversation (its `raise_exception` message).
        `TokenizerError`: the folder has no chat template, or the template is not valid Jinja.
    """
    from jinja2.exceptions import TemplateError, TemplateSyntaxError

    if not getattr(tok, "chat_template", None):
        raise TokenizerError("the tokenizer has no chat template (tokenizer_config.json 'chat_template')")
    try:
        ids = tok.apply_chat_template(
            copy.deepcopy(list(messages)),
            tools=copy.deepcopy(list(tools)) if tools is not None else None,
            tokenize=True,
            add_generation_prompt=True,
            return_dict=False,
        )
    except TemplateSyntaxError as exc:
        raise TokenizerError(f"invalid chat template: {exc}") from exc
    except (TemplateError, TypeError, ValueError, KeyError) as exc:
        raise ChatTemplateError(f"conversation rejected by the chat template: {exc}") from exc
    if ids and isinstance(ids[0], list):  # some versions return a batch
        ids = ids[0]
    return [int(i) for i in ids]


def load_hf_tokenizer(hf_dir: Path) -> Any:
    """The folder's tokenizer.json (with tokenizer_config.json), as a fast tokenizer.

    Not `AutoTokenizer`: since transformers 5, a folder that also holds `tekken.json` loads as
    `MistralCommonBackend`, which is mistral-common itself and would make the check compare the
    reference with itself. What is measured here is the tokenizer.json every other client reads.
    """
    import transformers

    if not (hf_dir / TOKENIZER_JSON).is_file():
        raise TokenizerError(f"{hf_dir}: expected the Hugging Face tokenizer (tokenizer.json), found none")
    try:
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
    except Exception as exc:  # transformers raises many types for a bad folder
        raise TokenizerError(
            f"{hf_dir}: expected a Hugging Face tokenizer transformers can load, found {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def load_reference_tokenizer(native_file: Path, version: str, workdir: str) -> Any:
    """mistral-common's tokenizer for the file, read as `version` (an unversioned tokenizer.model is
    otherwise always v1)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = native_file
    if version.startswith("v") and native_file.name.endswith(".model"):
        path = Path(workdir) / spm_versioned_name(version)
        path.write_bytes(read_tokenizer_bytes(native_file))
    try:
        return MistralTokenizer.from_file(str(path))
    except Exception as exc:  # mistral-common raises assertion/value errors for bad files
        raise TokenizerError(f"mistral-common cannot load '{native_file}' ({type(exc).__name__}: {exc})") from exc


def _window(ids: Sequence[int], start: int, piece: Any) -> tuple[str, ...]:
    return tuple(piece(i) for i in ids[start : start + WINDOW])


def _compare(
    kind: str, source: str, index: int, sample: Any, hf: list[int] | str, ref: list[int] | str, piece: Any
) -> Miss | None:
    """None when both sides agree (same ids, or both rejected); else the Miss. Strings are rejections."""
    if isinstance(hf, str) and isinstance(ref, str):
        return None
    shown = repr(sample)[:120]
    if isinstance(hf, str) or isinstance(ref, str):
        detail = f"HF rejected: {hf}" if isinstance(hf, str) else f"mistral-common rejected: {ref}"
        return Miss(kind, source, index, shown, None, (), (), detail)
    if hf == ref:
        return None
    pos = next((i for i, (a, b) in enumerate(zip(hf, ref, strict=False)) if a != b), min(len(hf), len(ref)))
    return Miss(
        kind,
        source,
        index,
        shown,
        pos,
        _window(hf, pos, piece),
        _window(ref, pos, piece),
        f"{len(hf)} vs {len(ref)} tokens; ids {hf[pos : pos + WINDOW]} vs {ref[pos : pos + WINDOW]}",
    )


def reference_chat_ids(
    mt: Any, messages: Sequence[dict[str, Any]], flavour: str, tools: Sequence[Any] | None = None
) -> list[int] | str:
    """mistral-common's ids for a conversation (a ChatML text for "chatml"), or why it rejects it."""
    try:
        if flavour == "chatml":
            if not messages or any(not isinstance(m.get("content"), str) for m in messages):
                return "ChatML needs at least one message, each with string content"
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return list(mt.instruct_tokenizer.tokenizer.encode(text + "<|im_start|>assistant\n", True, False))
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        fields: dict[str, Any] = {"messages": copy.deepcopy(list(messages))}
        if tools is not None:
            fields["tools"] = copy.deepcopy(list(tools))
        request: Any = ChatCompletionRequest.model_validate(fields)
        return list(mt.encode_chat_completion(request).tokens)
    except Exception as exc:  # pydantic, validation and tokenizer exceptions all mean "rejected"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def hf_chat(tok: Any, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None = None) -> list[int] | str:
    """`hf_chat_ids`, or the template's reason for rejecting the conversation."""
    try:
        return hf_chat_ids(tok, messages, tools)
    except ChatTemplateError as exc:
        return str(exc)


def _has_special(value: Any, specials: Sequence[str]) -> bool:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return any(s in text for s in specials)


def check_tokenizer(
    hf_dir: Path, native_file: Path, *, prompts: list[Any] | None = None, chat: bool = True
) -> TokenizerReport:
    """Compare the HF tokenizer in `hf_dir` with mistral-common on `native_file`.

    Args:
        hf_dir (`Path`): folder with tokenizer.json / tokenizer_config.json.
        native_file (`Path`): the native tokenizer (tokenizer.model[.vN] or tekken*.json).
        prompts (`list`, *optional*): extra texts (str) and conversations (lists of messages),
            as `load_prompts` returns.
        chat (`bool`, *optional*, defaults to True): also compare conversations when the folder has a
            chat template.

    Returns:
        `TokenizerReport`: counts, agreement, misses and special-token divergences.

    Raises:
        `TokenizerError`: either tokenizer cannot be loaded, or the chat template is not valid Jinja.
    """
    version = tokenizer_version(native_file)
    tokenizer_vocab_size(native_file)  # validates sizes and counts before mistral-common builds anything
    tok = load_hf_tokenizer(hf_dir)
    flavour = template_flavour(getattr(tok, "chat_template", None)) if chat else "none"
    extra = list(prompts or [])
    texts = [("builtin", i, t) for i, t in enumerate(BUILTIN_TEXTS)]
    texts += [("prompts", i, p) for i, p in enumerate(extra) if isinstance(p, str)]
    convs: list[tuple[str, int, Any]] = [("builtin", i, list(c)) for i, c in enumerate(BUILTIN_CONVERSATIONS)]
    if flavour == "mistral":
        convs += [("builtin-tools", i, c) for i, c in enumerate(BUILTIN_TOOL_CONVERSATIONS)]
    if flavour == "mistral" and instruct_version(native_file) in TEKKEN_VERSIONS:
        convs += [("builtin-tekken", i, c) for i, c in enumerate(BUILTIN_TEKKEN_CONVERSATIONS)]
    convs += [("prompts", i, p) for i, p in enumerate(extra) if isinstance(p, (list, dict))]
    convs = convs if flavour != "none" else []
    specials = [str(s) for s in tok.all_special_tokens] + [str(t) for t in tok.added_tokens_encoder]
    misses: list[Miss] = []
    divergences: list[Miss] = []
    with tempfile.TemporaryDirectory() as workdir:
        mt = load_reference_tokenizer(native_file, version, workdir)
        raw = mt.instruct_tokenizer.tokenizer
        for source, index, text in texts:
            ref = list(raw.encode(text, bos=True, eos=False))
            exact = _compare(
                "text", source, index, text, tok(text, split_special_tokens=True)["input_ids"], ref, raw.id_to_piece
            )
            default = _compare("text", source, index, text, tok(text)["input_ids"], ref, raw.id_to_piece)
            if exact is not None or (default is not None and not _has_special(text, specials)):
                misses.append(exact or default)  # type: ignore[arg-type]
            elif default is not None:
                divergences.append(default)
        for source, index, conv in convs:
            messages, tools = split_chat(conv)
            miss = _compare(
                "chat",
                source,
                index,
                conv,
                hf_chat(tok, messages, tools),
                reference_chat_ids(mt, messages, flavour, tools),
                raw.id_to_piece,
            )
            if miss is not None:
                (divergences if miss.position is not None and _has_special(conv, specials) else misses).append(miss)
    total = len(texts) + len(convs)
    return TokenizerReport(
        str(hf_dir),
        str(native_file),
        version,
        flavour,
        texts=len(texts),
        conversations=len(convs),
        agreed=total - len(misses),
        misses=tuple(misses),
        divergences=tuple(divergences),
        hf_vocab_size=len(tok),
        native_vocab_size=raw.n_words,
    )

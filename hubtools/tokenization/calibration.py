"""Calibration and held-out samples for `hubtools quantize` / `verify` on a quantized folder, as token rows.

The package ships two sets (`calibration_data/`, written for hubtools, Apache-2.0 like the code): the default
calibration set (prose in English, French, German, Spanish, Italian, Portuguese and a paragraph each in
Dutch, Polish, Russian, Chinese, Japanese, Korean, Arabic and Hindi; code in Python, JavaScript, TypeScript,
Rust, C, Go, Java, SQL, Bash and HTML; chats in those languages) and a held-out set for measuring quality,
disjoint from it (tested). A user's `--calibration FILE` is JSONL of the same shapes.

Chats are stored as messages, never as rendered text: `SampleEncoder` renders them at use time in the
model's own format: the folder's chat template when it has one (`apply_chat_template`, the prompt users send),
else mistral-common's `encode_chat_completion` on the native tokenizer file. A chat that ends with an
assistant turn is rendered up to its last user turn (with the generation prompt), then the answer's text and
EOS follow, as the model saw them in training (both clients refuse to render a final assistant turn).

`calibration_rows` turns samples into token rows: each starts with BOS; a sample longer than `seq_len` goes
on in further rows (BOS + the next tokens); rows are taken round-robin across kinds (languages, code, chat),
first rows first, so any number of rows is a mix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hubtools.errors import InvalidValueError, TokenizerError

__all__ = [
    "Sample",
    "SampleEncoder",
    "builtin_calibration",
    "builtin_heldout",
    "calibration_rows",
    "describe_samples",
    "load_calibration",
]

ROLES = ("system", "user", "assistant")
MAX_FILE_BYTES = 1 << 30
MIN_ROW_TOKENS = 8  # a sample's last fragment shorter than this is dropped (it carries almost no context)
_KEYS = {"text", "messages", "tag"}
Message = dict[str, str]


@dataclass(frozen=True)
class Sample:
    """One calibration or held-out sample: a text, or a conversation (`messages`), never both.

    `tag` says what kind it is ("en", "code-python", "chat-fr"; "user" for a file's untagged lines) and
    `origin` where it came from ("builtin calibration line 3", "data.jsonl line 12").

    Example:
        >>> Sample("Hello.", None, "en", "example").is_chat
        False
    """

    text: str | None
    messages: tuple[Message, ...] | None
    tag: str
    origin: str

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def _shape(item: Any) -> str:
    if isinstance(item, dict):
        return "an object with keys " + ", ".join(sorted(map(str, item))) if item else "an empty object"
    if isinstance(item, list):
        return "an empty list" if not item else "a list that is not {role, content} messages"
    return {str: "an empty string", type(None): "null"}.get(type(item), type(item).__name__)


def _messages(value: Any) -> tuple[Message, ...] | None:
    """The conversation as (role, content) strings, or None when `value` is not one."""
    if not isinstance(value, list) or not value:
        return None
    out = []
    for message in value:
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return None
        role, content = message["role"], message["content"]
        if role not in ROLES or not isinstance(content, str) or not content:
            return None
        out.append({"role": role, "content": content})
    return tuple(out) if any(m["role"] == "user" for m in out) else None


def _sample(item: Any, where: str) -> Sample | str:
    """The sample a JSONL line holds, or what was expected instead (for the error line)."""
    fields = item if isinstance(item, dict) else {"messages" if isinstance(item, list) else "text": item}
    unknown = sorted(set(fields) - _KEYS)
    tag = fields.get("tag", "user")
    if unknown or not isinstance(tag, str) or ("text" in fields) == ("messages" in fields):
        return f'a string, a list of messages, or an object with "text" or "messages" (and "tag"); found {_shape(item)}'
    if "text" in fields:
        if not isinstance(fields["text"], str) or not fields["text"]:
            return f"a non-empty text, found {_shape(fields['text'])}"
        return Sample(fields["text"], None, tag, where)
    messages = _messages(fields["messages"])
    if messages is None:
        return (
            'messages as a non-empty list of {"role": system|user|assistant, "content": non-empty string} '
            "with at least one user turn"
        )
    return Sample(None, messages, tag, where)


def parse_lines(lines: Sequence[str], name: str) -> tuple[Sample, ...]:
    """Samples from JSONL lines (blank lines skipped); `name` names the file in messages and origins.

    Raises:
        `InvalidValueError`: a line that is not JSON or not a sample ("NAME: line N: expected ..., found ..."),
            or no sample at all.
    """
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise InvalidValueError(f"{name}: line {number}: expected JSON, found {detail}") from None
        sample = _sample(item, f"{name} line {number}")
        if isinstance(sample, str):
            raise InvalidValueError(f"{name}: line {number}: expected {sample}")
        samples.append(sample)
    if not samples:
        raise InvalidValueError(f"{name}: expected at least one calibration sample, found none")
    return tuple(samples)


def load_calibration(path: str | Path) -> tuple[Sample, ...]:
    """Read a `--calibration` JSONL file: each line a text (a JSON string, or {"text": ...}) or a conversation
    (a list of {role, content} messages, or {"messages": [...]}); objects may carry a "tag".

    Raises:
        `InvalidValueError`: not a readable UTF-8 regular file of at most 1 GiB, or a bad line (named).

    Example:
        >>> load_calibration("/no.jsonl")
        Traceback (most recent call last):
        ...
        hubtools.errors.InvalidValueError: /no.jsonl: expected a calibration file (JSONL), found no such file
    """
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file" if not path.exists() else "not a regular file"
        raise InvalidValueError(f"{path}: expected a calibration file (JSONL), found {found}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidValueError(f"{path}: expected a calibration file of at most 1 GiB, found {size} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidValueError(f"{path}: expected a readable UTF-8 calibration file, found {exc}") from None
    return parse_lines(text.splitlines(), str(path))


def _builtin(name: str) -> tuple[Sample, ...]:
    data = resources.files("hubtools.tokenization").joinpath("calibration_data", f"{name}.jsonl")
    return parse_lines(data.read_text(encoding="utf-8").splitlines(), f"builtin {name}")


def builtin_calibration() -> tuple[Sample, ...]:
    """The default calibration set shipped with hubtools (see the module docstring)."""
    return _builtin("calibration")


def builtin_heldout() -> tuple[Sample, ...]:
    """The held-out set quality is measured on: the same kinds as the calibration set, other passages."""
    return _builtin("heldout")


def describe_samples(samples: Sequence[Sample]) -> str:
    """One line for reports and cards, e.g. "61 samples: prose (en 6, fr 5, ...), code (...), 12 chats".

    Example:
        >>> describe_samples([Sample("a", None, "en", "x"), Sample("b", None, "code-c", "x")])
        '2 samples: prose (en 1), code (c 1)'
    """
    groups: dict[str, dict[str, int]] = {"prose": {}, "code": {}, "chat": {}}
    for s in samples:
        kind = "chat" if s.is_chat else "code" if s.tag.startswith("code-") else "prose"
        label = s.tag.removeprefix("code-").removeprefix("chat-")
        groups[kind][label] = groups[kind].get(label, 0) + 1
    parts = [f"{k} ({', '.join(f'{t} {n}' for t, n in v.items())})" for k, v in groups.items() if k != "chat" and v]
    chats = sum(groups["chat"].values())
    return f"{len(samples)} samples: " + ", ".join(parts + ([f"{chats} chats"] if chats else []))


@dataclass(frozen=True)
class SampleEncoder:
    """Token ids of samples for one model: texts with BOS; chats in the model's own format (module docstring).

    `for_folder` builds one from a model folder; tests and benches may pass their own callables.
    """

    encode_text: Callable[[str, bool], list[int]]  # (text, with BOS) -> ids
    encode_prompt: Callable[[Sequence[Message]], list[int]]  # conversation ending in a user turn -> ids (BOS, prompt)
    bos_id: int
    eos_id: int
    describe: str

    def encode(self, sample: Sample) -> list[int]:
        """The ids of one sample (see the module docstring for chats)."""
        if sample.messages is None:
            return self.encode_text(sample.text or "", True)
        messages = list(sample.messages)
        answer = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
        while messages[-1]["role"] != "user":  # a trailing system turn after the last user turn: drop it
            messages.pop()
        ids = self.encode_prompt(messages)
        return ids if answer is None else [*ids, *self.encode_text(answer, False), self.eos_id]

    @classmethod
    def for_folder(cls, folder: str | Path) -> SampleEncoder:
        """The encoder of a model folder (HF or native).

        Raises:
            `TokenizerError`: the folder has neither an HF tokenizer nor a native tokenizer file.
        """
        from hubtools.tokenization.encoders import folder_encoder

        return cls(**folder_encoder(Path(folder)))


def _rows_of(ids: list[int], bos_id: int, seq_len: int) -> list[list[int]]:
    """`ids` (starting with BOS) cut into rows of at most `seq_len`, each row after the first led by BOS."""
    rows, body = [ids[:seq_len]], ids[seq_len:]
    while body:
        rows.append([bos_id, *body[: seq_len - 1]])
        body = body[seq_len - 1 :]
    return [rows[0], *(r for r in rows[1:] if len(r) >= MIN_ROW_TOKENS)]


def calibration_rows(samples: Sequence[Sample], encoder: SampleEncoder, *, count: int, seq_len: int) -> list[list[int]]:
    """At most `count` token rows of at most `seq_len` tokens (fewer when the samples run out), deterministic.

    Rows are taken round-robin across tags, first rows of every sample before second rows.

    Raises:
        `InvalidValueError`: `count` < 1 or `seq_len` < 2.
        `TokenizerError`: the encoder cannot encode a sample (its origin is named).
    """
    if count < 1:
        raise InvalidValueError(f"--samples: expected a positive number of calibration rows, found {count}")
    if seq_len < 2:
        raise InvalidValueError(f"--seq-len: expected at least 2 tokens per calibration row, found {seq_len}")
    by_tag: dict[str, list[list[list[int]]]] = {}
    for sample in samples:
        try:
            ids = encoder.encode(sample)
        except TokenizerError as exc:
            raise TokenizerError(f"{sample.origin}: cannot encode the calibration sample ({exc})") from exc
        by_tag.setdefault(sample.tag, []).append(_rows_of(ids, encoder.bos_id, seq_len))
    queues = [[row for rows in zip_longest_rows(groups) for row in rows] for groups in by_tag.values()]
    out: list[list[int]] = []
    for depth in range(max(map(len, queues), default=0)):
        out += [q[depth] for q in queues if depth < len(q)]
    return out[:count]


def zip_longest_rows(groups: list[list[list[int]]]) -> list[list[list[int]]]:
    """The rows of a tag's samples in order: every sample's first row, then every second row, ...

    Example:
        >>> zip_longest_rows([[[1], [2]], [[3]]])
        [[[1], [3]], [[2]]]
    """
    depth = max(map(len, groups), default=0)
    return [[rows[d] for rows in groups if d < len(rows)] for d in range(depth)]

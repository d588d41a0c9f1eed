"""The fixed sets of tokenizer values, defined once: tokenizer versions and chat-template choices.

They feed `click.Choice`, recipe and card-source validation and the template builder alike. This module
imports nothing heavy, so the CLI can build its options from it at start-up.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from hubtools.errors import InvalidValueError


class TokenizerVersion(str, Enum):
    """mistral-common's tokenizer generations that hubtools converts."""

    V1 = "v1"
    V2 = "v2"
    V3 = "v3"
    V7 = "v7"
    TEKKEN = "tekken"

    @classmethod
    def sentencepiece(cls) -> tuple[TokenizerVersion, ...]:
        """Versions stored as SentencePiece models (`MistralTokenizer.v1()` ... `.v7()` exist for these).

        Example:
            >>> [v.value for v in TokenizerVersion.sentencepiece()]
            ['v1', 'v2', 'v3', 'v7']
        """
        return tuple(v for v in cls if v is not cls.TEKKEN)


TEKKEN_VERSIONS = ("v3", "v7", "v11", "v13", "v15")  # a tekken.json's instruct format (`config.version`)


class ChatTemplate(str, Enum):
    """What goes into tokenizer_config.json's chat_template.

    `auto` resolves per tokenizer: `mistral` for v2, v3, v7 and tekken (instruct formats with control
    tokens), `none` for v1 (its base and instruct models share one tokenizer; recipes say which).
    """

    AUTO = "auto"
    MISTRAL = "mistral"
    CHATML = "chatml"
    NONE = "none"

    @classmethod
    def parse(cls, value: Any) -> ChatTemplate:
        """A choice from its name ("auto", "mistral", "chatml", "none") or a `ChatTemplate`.

        Raises:
            InvalidValueError: any other value, naming it.
        """
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise InvalidValueError(f"chat_template '{value}': expected one of {', '.join(cls.values())}") from None

    @classmethod
    def values(cls, *, auto: bool = True) -> list[str]:
        """The choices as strings, for click and messages.

        Example:
            >>> ChatTemplate.values(auto=False)
            ['mistral', 'chatml', 'none']
        """
        return [c.value for c in cls if auto or c is not cls.AUTO]


def one_of(values: list[str] | tuple[str, ...]) -> str:
    """'a, b or c' for messages."""
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else "".join(values)

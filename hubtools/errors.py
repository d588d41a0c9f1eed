"""Typed errors. The library raises these; only `hubtools.cli` turns them into one line and an exit code.

No other exception type is part of the API: `ValueError`s of bad arguments are `InvalidValueError`.
"""

from __future__ import annotations


class HubtoolsError(Exception):
    """Base class: a user-facing failure whose message is one line.

    One message form everywhere, the path (or value) at fault first:
    "{path}: expected {what was expected}, found {what was found}" (a hint may follow in parentheses).
    The library raises these and never prints or exits; `hubtools.cli` prints "error: {message}".
    """

    exit_code = 1


class InvalidValueError(HubtoolsError, ValueError):
    """A value given by the user (a flag, a recipe field, an argument) is malformed or out of range."""


class LayoutError(HubtoolsError):
    """A folder is not a checkpoint we know, or is ambiguous (two weight formats, missing files)."""


class ParamsError(HubtoolsError):
    """`params.json` / `config.json` is missing, invalid, or inconsistent with the tensors."""


class MappingError(HubtoolsError):
    """A tensor is unknown, missing, duplicated, or has the wrong shape for the name table."""


class CorruptFileError(HubtoolsError):
    """A weight file is truncated or its header/archive is malformed."""


class UnsafePickleError(CorruptFileError):
    """A `.pth` pickle references something other than tensor-rebuild globals; it is never executed."""


class DestinationError(HubtoolsError):
    """The output path exists (use --force) or cannot be written."""


class RecipeError(HubtoolsError):
    """A `converters/*.yaml` recipe is invalid, or the source does not match it."""


class TokenizerError(HubtoolsError):
    """A tokenizer file cannot be read or converted, or disagrees with the model."""


class ChatTemplateError(TokenizerError):
    """A conversation the reference (mistral-common) would reject."""


class VerifyError(HubtoolsError):
    """Verification could not run, or a verify report cannot be read (not: verification ran and found differences)."""


class CardError(HubtoolsError):
    """A card source or its metadata breaks a rule the Hub enforces."""


class PublishError(HubtoolsError):
    """An upload failed or the remote files do not match the local ones."""


class QuantizeError(HubtoolsError):
    """A quant type or quantization option is unknown or unfit for the model, llama.cpp's quantizer is missing or
    failed, or a calibration file cannot be used."""


class SourceError(HubtoolsError):
    """A remote source (HTTP folder, tar URL, Hub repo) cannot be listed or keeps failing."""


class Interrupted(HubtoolsError):
    """Ctrl-C during a long command; the message says what was kept."""

    exit_code = 130


class OutputInPlace(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) that arrived once a new output was in place: it is complete, the old one gone."""

    def __init__(self, where: object, signum: int = 2) -> None:
        super().__init__(f"the new output is in place at {where}")
        self.where, self.signum = where, signum
